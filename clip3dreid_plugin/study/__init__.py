"""Research instruments: what the method is measured against, apart from the method itself.

Submodules (one concept each): ``ideal_teacher`` (``teacher.mode ideal``: a teacher that knows synthcc's shapes),
``standin_teacher`` (``teacher.mode stand-in``: synthcc's true labels with a CLIP's features, in a cache of its
own), ``shape_probe_model`` and ``shape_probe_engine`` (``model.name shape_probe``: how visible shape is at all),
``shape_probe_meshset`` (``model.name shape_probe_meshset``: the probe trained on the mesh set's renders only),
``chance`` (the chance level of random rankings) and ``records`` (the method study's committed results, e.g. the
seed spread the quickstart's verdict reads).

This package sits above engine, models, teacher and body: it may import them, none of them imports it. Its models,
engines and teacher modes enter the plugin's tables (and torchreid's model registry) through
:func:`clip3dreid_plugin.register` only, from the tables below.
"""
from __future__ import annotations

from typing import Callable, Dict

from clip3dreid_plugin.study.ideal_teacher import build_ideal_teacher_source
from clip3dreid_plugin.study.shape_probe_engine import build_shape_probe_engine
from clip3dreid_plugin.study.shape_probe_meshset import build_meshset_probe_engine
from clip3dreid_plugin.study.shape_probe_model import shape_probe
from clip3dreid_plugin.study.standin_teacher import build_standin_teacher_source

#: model name -> torchreid factory, added to torchreid's model registry by register().
MODEL_FACTORIES: Dict[str, Callable] = {
    "shape_probe": shape_probe,  # ResNet-50 regressing true body shape (synthcc's shape-visibility probe)
    "shape_probe_meshset": shape_probe,  # the same regressor, trained on the mesh set's renders only
}
#: model name -> engine builder, added to ``engine.build.ENGINE_BUILDERS`` by register().
ENGINE_BUILDERS: Dict[str, Callable] = {"shape_probe": build_shape_probe_engine,
                                        "shape_probe_meshset": build_meshset_probe_engine}
#: teacher.mode -> source builder, added to ``teacher.source.TEACHER_MODES`` by register().
TEACHER_MODES: Dict[str, Callable] = {"ideal": build_ideal_teacher_source, "stand-in": build_standin_teacher_source}

__all__ = ["ENGINE_BUILDERS", "MODEL_FACTORIES", "TEACHER_MODES"]
