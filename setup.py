from setuptools import find_namespace_packages, find_packages, setup

setup(
    name="stklia",
    version="0.1.0",
    description="Speaker embeddings (x-vectors) with PyTorch and Hydra on Kaldi data",
    packages=find_packages(include=["stklia", "stklia.*"])
    + find_namespace_packages(include=["hydra_plugins.*"]),  # the Optuna sweeper (a Hydra plugin)
    package_data={"stklia": ["conf/**/*.yaml", "conf/**/*.md"]},  # the Hydra configs ship with the package
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "hydra-core>=1.3.2",
        "omegaconf>=2.3",
        "kaldiio>=2.18",
        "kaldi-native-fbank>=1.18",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "soundfile>=0.12",
    ],
    extras_require={
        "slurm": ["hydra-submitit-launcher>=1.2"],
        "optuna": ["optuna>=4.0"],  # hparams_search=... (stklia's Hydra sweeper plugin)
        "dev": ["pytest>=7.4", "ruff>=0.4"],
        "export": ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"],
    },
)
