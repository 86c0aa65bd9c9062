"""register(): explicit, idempotent, the only thing that mutates torchreid."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_import_mutates_nothing_and_register_is_idempotent():
    res = _run(
        """
        import warnings; warnings.filterwarnings('ignore')
        import torchreid
        from clip3dreid_plugin import compat
        def snap():
            return (dict(compat.model_factory()), dict(compat.image_dataset_registry()),
                    dict(compat.video_dataset_registry()))
        before = snap()
        import clip3dreid_plugin, datasets_ext, clip3dreid_plugin.models, clip3dreid_plugin.engine
        import clip3dreid_plugin.tools.train_net
        assert snap() == before, 'import changed torchreid registries'
        import clip3dreid_plugin.study, clip3dreid_plugin.engine.build, clip3dreid_plugin.teacher.source
        assert 'shape_probe' not in clip3dreid_plugin.engine.build.ENGINE_BUILDERS, 'import filled a plugin table'
        assert 'ideal' not in clip3dreid_plugin.teacher.source.TEACHER_MODES, 'import filled a plugin table'
        clip3dreid_plugin.register()
        once = snap()
        clip3dreid_plugin.register()
        assert snap() == once, 'second register() changed something'
        from clip3dreid_plugin import study
        from clip3dreid_plugin.engine.build import ENGINE_BUILDERS
        from clip3dreid_plugin.models import MODEL_FACTORIES as PLUGIN_MODELS
        from clip3dreid_plugin.teacher.source import TEACHER_MODES
        from datasets_ext import IMAGE_DATASETS, VIDEO_DATASETS
        MODEL_FACTORIES = {**PLUGIN_MODELS, **study.MODEL_FACTORIES}
        assert 'shape_probe' in MODEL_FACTORIES and 'shape_probe' not in PLUGIN_MODELS
        # the study's instruments reach the plugin's own tables through register() only
        assert ENGINE_BUILDERS['shape_probe'] is study.ENGINE_BUILDERS['shape_probe']
        assert set(study.TEACHER_MODES) == {'ideal', 'stand-in'} <= set(TEACHER_MODES)
        for name in MODEL_FACTORIES: assert name in torchreid.models.__dict__['__model_factory'], name
        for name in IMAGE_DATASETS: assert name in compat.image_dataset_registry(), name
        for name in VIDEO_DATASETS: assert name in compat.video_dataset_registry(), name
        added = (len(once[0]) - len(before[0]), len(once[1]) - len(before[1]), len(once[2]) - len(before[2]))
        assert added == (len(MODEL_FACTORIES), len(IMAGE_DATASETS), len(VIDEO_DATASETS)), added
        print('OK', added)
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "OK" in res.stdout


def test_register_refuses_to_overwrite_a_foreign_entry(monkeypatch):
    from clip3dreid_plugin import registry

    table = {"x": object()}
    with pytest.raises(ValueError, match="already has a model named 'x'"):
        registry._put(table, "x", object(), "model")
    same = table["x"]
    registry._put(table, "x", same, "model")  # the same object again is fine (idempotence)
    assert table["x"] is same


def test_datasets_ext_does_not_import_the_plugin():
    # The plugin imports datasets_ext (to register it), never the reverse: the loaders stand alone.
    res = _run(
        """
        import sys, warnings; warnings.filterwarnings('ignore')
        import datasets_ext
        from datasets_ext import IMAGE_DATASETS, VIDEO_DATASETS
        assert "ltcc" in IMAGE_DATASETS and "ccvid" in VIDEO_DATASETS
        print(sorted(m for m in sys.modules if m.startswith("clip3dreid_plugin")))
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
