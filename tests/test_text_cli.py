"""A text run end to end through the command line (the text modality, issue #26): `fedleak attack`
on the built-in `pii` corpus with a tiny GPT-2, its run folder and report, and bad text input ending in
one line and exit code 2."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("rouge_score")

from tests.test_cli import fedleak  # noqa: E402

PII = ["--dataset", "pii", "--model", "gpt2-tiny", "--set", "data.options.n=48", "--set", "data.options.seq_len=32", "--set", "client.seed=0",
       "--quiet"]


def test_dager_on_pii_writes_a_text_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, err = fedleak(monkeypatch, capsys, "attack", *PII, "--attack", "dager", "-b", "2", "--out", str(out))
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["modality"] == "text" and m["sequences"] == 2 and len(m["texts"]) == 2
    # what came back is far above what another sentence of the corpus scores
    assert m["rouge1"] > m["baselines"]["other_text"]["rouge1"] + 0.5
    assert m["pii_spans"] >= 1 and m["pii_recovered_spans"] >= 1
    assert m["threat"]["granted"] == "B" and m["normalization"] is None
    texts = json.loads((out / "sequences.json").read_text())
    assert [t["original"] for t in texts] == [t["original"] for t in m["texts"]]
    html = (out / "report.html").read_text()
    assert 'id="text-reconstruction"' in html and "PSNR" not in html
    assert not (out / "reconstruction.png").exists()
    assert "ROUGE-1" in stdout


@pytest.mark.parametrize("args, message", [
    (["--dataset", "text", "--root", "{tmp}/missing.txt"], "missing.txt"),
    (["--dataset", "text", "--root", "{tmp}/empty.txt"], "empty"),
    (["--dataset", "pii", "--set", "data.options.seq_len=400"], "longer than the model's context"),
    (["--dataset", "pii", "--set", "data.options.tokenizer={tmp}/no-tokenizer"], "tokenizer"),
    (["--dataset", "pii", "--model", "convnet"], "takes images"),
], ids=["missing file", "empty corpus", "longer than the context", "unknown tokenizer folder", "image model"])
def test_bad_text_input_ends_in_one_line(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "no-tokenizer").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    model = [] if "--model" in args else ["--model", "gpt2-tiny"]
    code, _, err = fedleak(monkeypatch, capsys, "attack", *args, *model, "--attack", "dager", "--quiet",
                           "--out", str(tmp_path / "run"))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedleak: error:") and message in lines[0], err
    assert not (tmp_path / "run").exists()
