"""Every bash / python / yaml block of README.md and docs/*.md runs as written (one case per block, id file:line),
with only the substitutions of substitutions.yaml; and the harness fails on a broken block or a reason-less marker."""
from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
import torch

import doc_blocks
from fixtures.dataset_trees import make_ltcc, make_manifest

RESNET50_FILE = "resnet50-19c8e357.pth"
_TRAINS = re.compile(r"clip3dreid-train|clip3dreid-quickstart|engine\.run\(|torchrun")


def _cases():
    out = []
    for b in doc_blocks.all_blocks():
        marks = [pytest.mark.slow] if _TRAINS.search(b.code) and b.skip is None else []
        out.append(pytest.param(b, id=b.id, marks=marks))
    return out


@pytest.fixture(scope="module")
def doc_env(tmp_path_factory):
    """The fixture root, a PATH shim for the console scripts and a TORCH_HOME with a stand-in ImageNet file."""
    base = tmp_path_factory.mktemp("doc_blocks")
    root = str(base / "fixture_root")
    make_ltcc(root)
    make_manifest(osp.join(root, "mine"))
    shim = doc_blocks.write_path_shim(str(base / "bin"))
    # A seeded stand-in for torchreid's ImageNet file, so recipes with model.pretrained True run offline as a
    # user's machine with the file in its model-zoo cache does.
    import torchreid
    folder = base / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)  # a seeded, well-formed trunk (valid batch-norm statistics) in the file's layout
    ref = torchreid.models.resnet50(num_classes=1000, pretrained=False)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("classifier")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(state, folder / RESNET50_FILE)
    env = dict(os.environ, PATH=shim + os.pathsep + os.environ.get("PATH", ""), CLIP3DREID_PROGRESS="0",
               TORCH_HOME=str(base / "torch_home"),
               PYTHONPATH=os.pathsep.join([doc_blocks.REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return {"root": root, "env": env, "base": base}


@pytest.mark.parametrize("block", _cases())
def test_block_runs(block, doc_env, tmp_path):
    if block.skip is not None:
        pytest.skip(block.skip)
    code = doc_blocks.substitute(block.code, doc_blocks.load_substitutions(),
                                 {"root": doc_env["root"], "tmp": str(tmp_path), "repo": doc_blocks.REPO})
    doc_blocks.run_block(block, code, cwd=str(tmp_path), env=doc_env["env"])


def test_every_substitution_is_used_by_a_block_that_runs():
    code = "".join(b.code for b in doc_blocks.all_blocks() if b.skip is None)
    unused = [s["old"] for s in doc_blocks.load_substitutions() if s["old"] not in code]
    assert not unused, f"substitutions.yaml declares replacements no running block uses: {unused}"


def test_path_shim_maps_every_console_script(tmp_path):
    shim = doc_blocks.write_path_shim(str(tmp_path))
    names = sorted(os.listdir(shim))
    assert "clip3dreid-train" in names and "clip3dreid-compare" in names
    text = open(osp.join(shim, "clip3dreid-train"), encoding="utf-8").read()
    assert f'"{sys.executable}" -m clip3dreid_plugin.tools.train_net "$@"' in text


def _fake_md(tmp_path, text):
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "fake.md").write_text(text, encoding="utf-8")
    return doc_blocks.extract("docs/fake.md", repo=str(tmp_path))


@pytest.mark.parametrize("lang,body", [("bash", "echo fine\nls /no/such/folder/at/all\n"),
                                       ("python", "import os\nundefined_name_here\n")],
                         ids=["bash", "python"])
def test_a_broken_block_fails_naming_its_file_and_line(tmp_path, lang, body):
    blocks = _fake_md(tmp_path, f"# Fake\n\ntext\n\n```{lang}\n{body}```\n")
    assert [(b.line, b.lang, b.skip) for b in blocks] == [(5, lang, None)]
    with pytest.raises(AssertionError, match=r"^docs/fake\.md:5: " + lang + " block failed"):
        doc_blocks.run_block(blocks[0], blocks[0].code, cwd=str(tmp_path), env=dict(os.environ))


def test_a_broken_yaml_block_fails_naming_its_file_and_line(tmp_path):
    blocks = _fake_md(tmp_path, "intro\n```yaml\nkey: [unclosed\n```\n")
    with pytest.raises(AssertionError, match=r"^docs/fake\.md:2: yaml block does not parse"):
        doc_blocks.run_block(blocks[0], blocks[0].code, cwd=str(tmp_path), env=dict(os.environ))


def test_a_working_block_passes(tmp_path):
    blocks = _fake_md(tmp_path, "```bash\ntest -d .\necho ok\n```\n\n```python\nassert 1 + 1 == 2\n```\n")
    for b in blocks:
        doc_blocks.run_block(b, b.code, cwd=str(tmp_path), env=dict(os.environ))
    assert [b.line for b in blocks] == [1, 6]


@pytest.mark.parametrize("marker", ["<!-- doc-test: skip -->", "<!-- doc-test: skip () -->",
                                    "<!-- doc-test: skip ( ) -->", "<!-- doc-test: run -->"])
def test_a_marker_without_a_reason_is_an_error(tmp_path, marker):
    with pytest.raises(doc_blocks.DocBlockError, match=r"^docs/fake\.md:3: .*reason"):
        _fake_md(tmp_path, f"# Fake\n\n{marker}\n```bash\nrm -rf /\n```\n")


def test_a_marker_with_a_reason_skips_its_block_only(tmp_path):
    blocks = _fake_md(tmp_path, "<!-- doc-test: skip (network) -->\n```bash\ncurl x\n```\n\n```bash\necho y\n```\n")
    assert [(b.line, b.skip) for b in blocks] == [(2, "network"), (6, None)]


def test_a_marker_away_from_a_fence_is_an_error(tmp_path):
    with pytest.raises(doc_blocks.DocBlockError, match=r"^docs/fake\.md:1: .*just before a fence"):
        _fake_md(tmp_path, "<!-- doc-test: skip (GPU) -->\n\n```bash\necho\n```\n")


def test_substitutions_replace_whole_words_only():
    subs = [{"old": "reid-data", "new": "{root}", "why": "x"}, {"old": "--output-dir log/", "new": "--output-dir {tmp}/",
                                                              "why": "y"}]
    code = "clip3dreid-dataset-info --root reid-data --output-dir log/mine\nls reid-data/x reid-datas\n"
    assert doc_blocks.substitute(code, subs, {"root": "/R", "tmp": "/T"}) == (
        "clip3dreid-dataset-info --root /R --output-dir /T/mine\nls /R/x reid-datas\n")
