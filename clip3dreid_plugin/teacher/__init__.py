"""The frozen CLIP teacher: descriptor prompts, the open_clip wrapper, the label cache and sources.

Import the submodules directly (``clip3dreid_plugin.teacher.clip_teacher`` etc.); this package
re-exports the names the rest of the plugin uses. open_clip is imported lazily, when a teacher is
built, so importing the package stays cheap.
"""
from clip3dreid_plugin.teacher.cache import (
    TeacherCache,
    TeacherCacheError,
    TeacherCacheMismatchError,
    TeacherCacheMissError,
    TeacherCacheStaleError,
    build_teacher_cache,
    cache_file_path,
)
from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher
from clip3dreid_plugin.teacher.weights import TeacherLoadError
from clip3dreid_plugin.teacher.descriptors import DESCRIPTOR_PAIRS, PROMPT_TEMPLATE, build_prompts, parse_pairs

__all__ = [
    "CLIPTeacher",
    "TeacherLoadError",
    "TeacherCache",
    "TeacherCacheError",
    "TeacherCacheMissError",
    "TeacherCacheMismatchError",
    "TeacherCacheStaleError",
    "build_teacher_cache",
    "cache_file_path",
    "DESCRIPTOR_PAIRS",
    "PROMPT_TEMPLATE",
    "build_prompts",
    "parse_pairs",
]
