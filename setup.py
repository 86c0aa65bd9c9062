"""Installs the CLIP3DReID torchreid plugin and every runtime dependency.

torch/torchvision are pinned as a pair: PyPI's torchvision wheels link the CUDA torch build,
which also runs on CPU-only machines; a mismatched pair fails at ``import torchvision``.
PyPI's ``torchreid==0.2.5`` declares no dependencies, so its needs are listed here too.

The recipes under ``configs/`` (the one source) install as ``clip3dreid_plugin/configs``, so an installed package
finds them by name (``--config-file ltcc/clip3dreid_r50_vitl14_384x192``) from any folder.
"""
from setuptools import find_packages, setup

RUNTIME = [
    "torch==2.15.0",
    "torchvision==0.29.2",
    "torchreid==0.2.5",
    "open_clip_torch>=3.3,<4",
    "smplx>=0.1.28",
    "pyrender>=0.1.45",
    "trimesh>=4",
    "pot>=0.9.7",
    "numpy>=1.26",
    "scipy>=1.11",
    "yacs>=0.1.8",
    "PyYAML>=6",
    "tensorboard>=2.15",
    "gdown>=5",
    "opencv-python-headless>=4.8,<5",  # 5.x drops CascadeClassifier and the Haar files
    "Pillow>=10",
    "tqdm>=4.66",
    "matplotlib>=3.7",  # clip3dreid-compare's CMC plots
]

# Every command-line tool, as <command> = clip3dreid_plugin.tools.<module>:main (scripts/ holds thin wrappers).
COMMANDS = {
    "clip3dreid-train": "train_net",
    "clip3dreid-quickstart": "quickstart",
    "clip3dreid-label": "label_descriptors",
    "clip3dreid-dataset-info": "dataset_info",
    "clip3dreid-download": "download_datasets",
    "clip3dreid-blur-faces": "blur_faces",
    "clip3dreid-build-synthcc": "build_synthcc",
    "clip3dreid-make-body-model": "make_body_model",
    "clip3dreid-render-meshset": "render_meshset",
    "clip3dreid-render-synthetic": "render_meshset",  # the old name, an alias for one release
    "clip3dreid-eval-shape": "eval_shape",
    "clip3dreid-benchmark": "benchmark",
    "clip3dreid-complexity": "complexity",
    "clip3dreid-export-curves": "export_curves",
    "clip3dreid-export-onnx": "export_onnx",
    "clip3dreid-extract-features": "extract_features",
    "clip3dreid-visualize-transport": "visualize_transport",
    "clip3dreid-compare": "compare",
    "clip3dreid-study": "study",
}

EXTRAS = {
    # wheel: the install test builds offline; import-linter: the layers contract of pyproject.toml (lint-imports)
    "test": ["pytest>=8", "onnx>=1.16", "onnxruntime>=1.18", "wheel", "import-linter>=2.1"],
    "export": ["onnx>=1.16", "onnxruntime>=1.18"],
}

setup(
    name="clip3dreid-plugin",
    version="0.1.0",
    description="CLIP3DReID (Liu et al., CVPR 2024) as a torchreid plugin, with cloth-changing datasets",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["clip3dreid_plugin", "clip3dreid_plugin.*", "datasets_ext", "datasets_ext.*"])
    + ["clip3dreid_plugin.configs"],
    package_dir={"clip3dreid_plugin.configs": "configs"},
    # study/seed_spread.json: the method study's record the quickstart's verdict reads; studies/: clip3dreid-study's
    # study files, one per cloth-changing dataset.
    package_data={"clip3dreid_plugin.configs": ["*.yaml", "*/*.yaml"], "clip3dreid_plugin.study": ["*.json"],
                  "clip3dreid_plugin": ["studies/*.yaml"]},
    entry_points={"console_scripts": [f"{cmd} = clip3dreid_plugin.tools.{mod}:main" for cmd, mod in COMMANDS.items()]},
    python_requires=">=3.9",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    license="MIT",
)
