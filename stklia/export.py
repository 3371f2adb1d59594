"""`python -m stklia.export model_dir=DIR format=torchscript|onnx [checkpoint=...] [out=FILE]`: a standalone
generator (features -> embeddings) that runs without stklia, in torch.jit or onnxruntime."""

from stklia.core.command import command
from stklia.inference.export import export_model

main = command(export_model, "commands/export")

if __name__ == "__main__":
    main()
