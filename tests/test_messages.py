"""Each failure names what is wrong, fast, once (issue 13, case 9): Omega paths, domain sources and
their text, config errors of `masllm sequential` before the heavy imports, as one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from masllm import Omega
from masllm.cli import argument_names
from masllm.continual import command, make_parser
from masllm.tasks.text.domains import DomainConfig, load_documents
from masllm.tasks.text.packing import build_domain, train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_missing_omega_directory():
    """It was `HFValidationError: Repo id must...`."""
    with pytest.raises(FileNotFoundError, match=r"No directory './nope' .*not a Hub repo id"):
        Omega.from_pretrained("./nope")
    with pytest.raises(FileNotFoundError, match="Hub repo 'someone/nope' could not be fetched"):
        Omega.from_pretrained("someone/nope")  # offline in the tests


@pytest.mark.parametrize("source", ["data/missing.txt", "./missing", "/no/such/folder"])
def test_missing_local_source_names_the_domain_at_once(source):
    """A relative path used to go to the Hub (ConnectionError), an absolute one failed in datasets
    after 53 s, in a traceback that never named the domain."""
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=f"Domain 'mine': source '{source}' does not exist"):
        load_documents(source, "train", DomainConfig(name="mine", source=source))
    assert time.perf_counter() - start < 1.0


def test_hub_name_that_cannot_be_loaded_names_the_domain():
    with pytest.raises(
        FileNotFoundError, match="Domain 'mine': source 'nobody-dataset' is not a local .* Hub"
    ):
        load_documents("nobody-dataset", "train", DomainConfig(name="mine", source="nobody-dataset"))


def test_binary_text_file(tmp_path):
    """It was a DatasetGenerationError."""
    (tmp_path / "a.txt").write_bytes(b"fine text\n")
    (tmp_path / "b.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(
        ValueError, match=r"Domain 'mine': .*b.txt is not UTF-8 text \(byte 0x89 at offset 0\)"
    ):
        load_documents(str(tmp_path), "train", DomainConfig(name="mine", source=str(tmp_path)))


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(["some text to learn a few merges from"] * 10, 300)


def test_empty_or_too_small_domain(tmp_path, tokenizer):
    """It was "Only 0 blocks" without the domain's name."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(ValueError, match="Domain 'void': source .* holds no text"):
        build_domain(DomainConfig(name="void", source=str(tmp_path / "empty")), tokenizer, 32, 0)
    (tmp_path / "small.txt").write_text("a few words")
    with pytest.raises(ValueError, match="Domain 'tiny' .*blocks of 32 tokens: Only 0 blocks"):
        build_domain(DomainConfig(name="tiny", source=str(tmp_path / "small.txt")), tokenizer, 32, 0)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="Domain 'none': .*found none"):
        build_domain(DomainConfig(name="none", source=str(tmp_path / "nothing")), tokenizer, 32, 0)
    assert isinstance(tokenizer, type(AutoTokenizer)) or tokenizer is not None


def test_argument_names_read_without_imports_match_the_parser():
    assert argument_names() == {a.dest for a in make_parser()._actions}


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m masllm.cli ...` with -X importtime: which modules were imported goes to stderr too."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-X", "importtime", "-m", "masllm.cli", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    return done, time.perf_counter() - start


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("leraning_rate: 0.1\n", "unknown keys ['leraning_rate'] (did you mean 'learning_rate'?)"),
        (
            "domains:\n  - {name: mine, source: /no/such/dir}\n",
            "domain 'mine': source '/no/such/dir' does not exist",
        ),
        ("domains: [\n", "not valid YAML"),
    ],
)
def test_cli_config_errors_are_one_line_before_heavy_imports(tmp_path, yaml_text, message):
    """The misspelt key came after 49 s of imports, printed twice (traceback)."""
    (tmp_path / "bad.yaml").write_text(yaml_text)
    done, seconds = _cli("sequential", "--config", str(tmp_path / "bad.yaml"))
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    ]
    printed = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and len(printed) == 1 and message in printed[0], done.stderr[-2000:]
    assert "yaml" in imported and "torch" not in imported and "transformers" not in imported
    print(f"masllm sequential: config error after {seconds:.2f} s")


def test_input_errors_after_parsing_are_one_line_too(tmp_path, capsys):
    """Errors found once the arguments are parsed (here a model_config key) are one line as well."""
    status = command(["--config", str(ROOT / "recipes/configs/tiny.yaml"), "--output_dir", str(tmp_path),
                      "--model_config", "{model_type: gpt2, n_layers: 4}"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("masllm sequential: error: model_config: ['n_layers'] not a field")
    assert err.count("\n") == 1
