from setuptools import find_namespace_packages, find_packages, setup

# Optional features, each named in the error a command gives when it misses one (stklia.core.errors.require_extra).
EXTRAS = {
    "slurm": ["hydra-submitit-launcher>=1.2"],  # hydra/launcher=slurm_gpu | submitit_slurm
    "export": ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"],  # stklia.export format=onnx
    "optuna": ["optuna>=4.0"],  # hparams_search=... (stklia's Hydra sweeper plugin)
    # lhotse manifests as data (stklia.data.manifests). lhotse asks for a bare `torch`, which the torch installed
    # first (pip install torch==2.13.0, as the README says) meets: pip pulls no other torch. lhotse 1.33 imports
    # urllib3 (lhotse/ais) without asking for it.
    "lhotse": ["lhotse>=1.30", "urllib3>=1.26"],
}
# What the peer toolkits' model and front-end code imports (their packages themselves install without
# dependencies, which would replace torch: `pip install --no-deps -r peers.txt`, see that file and .ci/run):
# hyperpyyaml, sentencepiece and huggingface_hub for speechbrain's EncoderClassifier, modelscope-hub and addict
# for ModelScope's CAM++ (3D-Speaker's).
PEER_DEPENDENCIES = ["hyperpyyaml>=1.2", "sentencepiece>=0.1.91", "huggingface_hub>=0.8", "modelscope-hub>=0.5",
                     "addict>=2.4"]
# Everything the test suite imports: every extra, the independent references the tests compare with
# (scikit-learn, kaldi-native-fbank, the peers' code), and setuptools for the wheel it builds (tests/test_install.py).
DEV = ["pytest>=7.4", "pytest-xdist>=3.5", "ruff>=0.4", "setuptools>=70.1", "scikit-learn>=1.3",
       "kaldi-native-fbank>=1.18", *PEER_DEPENDENCIES,
       *(package for packages in EXTRAS.values() for package in packages)]

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
        "scipy>=1.12",  # scipy.optimize.isotonic_regression (minCllr)
        "hydra-core>=1.3.2",
        "omegaconf>=2.3",
        "kaldiio>=2.18",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "matplotlib>=3.7",  # a legend outside the axes (loc="outside ...")
        "soundfile>=0.12",
        "threadpoolctl>=3.1",
        "pyyaml>=5.1",  # published models' YAML files, read with its safe loader (stklia.interop)
    ],
    extras_require={**EXTRAS, "dev": DEV},
)
