"""Downloads a cloth-changing dataset where its authors publish a direct link, else explains how to get it.

Examples::

    clip3dreid-download --dataset prcc --root /data
    clip3dreid-download --dataset ltcc --root /data      # prints how to request it
    clip3dreid-download --dataset ccvid --root /data --no-download

Only links published by the dataset authors (or, for PRCC, in the reference CAL code) are used, through ``gdown``.
Each downloaded archive's SHA-256 is printed (``--sha256`` checks it), and an archive is extracted only when none of
its members would land outside ``--root``. Every other dataset is distributed on request or from a page gdown cannot
fetch: the script prints where to ask and the exact directory tree the loader expects under
``--root``. Exit status: 0 when the dataset is present or instructions were printed, 1 when a
download or extraction failed, 2 on bad arguments.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
import stat
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from clip3dreid_plugin.errors import UserError
from clip3dreid_plugin.tools.common import CLIParser, cli_main, start_cli
from clip3dreid_plugin.utils.hashing import file_sha256
from clip3dreid_plugin.utils.paths import stays_inside
from clip3dreid_plugin.utils.progress import progress

logger = logging.getLogger("download_datasets")


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and how it must look on disk.

    Attributes:
        title: dataset name and reference.
        dataset_dir: folder the loader expects under ``--root``.
        how: how to obtain it (printed).
        tree: the expected directory tree under ``--root`` (printed).
        gdrive_id: Google Drive file id of an author-published archive, when one exists.
    """

    title: str
    dataset_dir: str
    how: str
    tree: str
    gdrive_id: Optional[str] = None


_CELEB_TREE = """{d}/
  train/<pid>_<k>_<z>.jpg
  query/<pid>_<k>_<z>.jpg
  gallery/<pid>_<k>_<z>.jpg"""

_BLUR_HOW = (
    "Not distributed: build it from {src} with faces Gaussian-blurred:\n"
    "  clip3dreid-blur-faces --src ROOT/{src} --dst ROOT/{d}"
)

SOURCES: Dict[str, Source] = {
    "ltcc": Source(
        "LTCC (Qian et al., ACCV 2020)", "LTCC_ReID",
        "Distributed on request: fill in the request on the LTCC project page "
        "https://naiq.github.io/LTCC_Perosn_ReID.html and unpack the archive under ROOT.",
        "LTCC_ReID/\n  train/<pid>_<clothes>_c<cam>_<frame>.png\n  query/...png\n  test/...png   (gallery)",
    ),
    "prcc": Source(
        "PRCC (Yang et al., TPAMI 2019)", "prcc",
        "Public Google Drive archive (link given in the CAL reference code): "
        "https://drive.google.com/file/d/1yTYawRm4ap3M-j0PjLQJ--xmZHseFDLz/view",
        "prcc/\n  rgb/\n    train/<pid>/<A|B|C>_*.jpg\n    val/<pid>/<A|B|C>_*.jpg\n"
        "    test/A/<pid>/*.jpg\n    test/B/<pid>/*.jpg\n    test/C/<pid>/*.jpg",
        gdrive_id="1yTYawRm4ap3M-j0PjLQJ--xmZHseFDLz",
    ),
    "celebreid": Source(
        "Celeb-reID (Huang et al., TCSVT 2019)", "Celeb-reID",
        "Download from the OneDrive link in https://github.com/Huang-3/Celeb-reID "
        "(https://1drv.ms/u/s!Ats-N2hYCkEIgckQF5M5TCsBF0aQZQ?e=IKG16O; gdown cannot fetch OneDrive) "
        "and unpack it under ROOT.",
        _CELEB_TREE.format(d="Celeb-reID"),
    ),
    "celebreid_light": Source(
        "Celeb-reID-light (Huang et al., IJCNN 2019)", "Celeb-reID-light",
        "Download from the OneDrive link in https://github.com/Huang-3/Celeb-reID "
        "(https://1drv.ms/u/s!Ats-N2hYCkEIgckRrtd0HGhUZPqNcw?e=ziRTjb; gdown cannot fetch OneDrive) "
        "and unpack it under ROOT.",
        _CELEB_TREE.format(d="Celeb-reID-light"),
    ),
    "celebreid_blur": Source(
        "Celeb-reID with blurred faces (CLIP3DReID evaluation)", "Celeb-reID-blur",
        _BLUR_HOW.format(src="Celeb-reID", d="Celeb-reID-blur"),
        _CELEB_TREE.format(d="Celeb-reID-blur"),
    ),
    "celebreid_light_blur": Source(
        "Celeb-reID-light with blurred faces", "Celeb-reID-light-blur",
        _BLUR_HOW.format(src="Celeb-reID-light", d="Celeb-reID-light-blur"),
        _CELEB_TREE.format(d="Celeb-reID-light-blur"),
    ),
    "deepchange": Source(
        "DeepChange (Xu & Zhu, ICCV 2023)", "DeepChangeDataset",
        "Distributed on request: sign the access agreement from "
        "https://github.com/PengBoXiangShang/deepchange and e-mail it from an institutional address as "
        "described there; the download link you receive is valid for 24 hours.",
        "DeepChangeDataset/\n  train-set/            train-set-bbox.txt\n"
        "  val-set-query/        val-set-query-bbox.txt\n  val-set-gallery/      val-set-gallery-bbox.txt\n"
        "  test-set-query/       test-set-query-bbox.txt\n  test-set-gallery/     test-set-gallery-bbox.txt\n"
        "  (list lines: <file name>,<tracklet id>; names P<pid>_C<cam>_<date>_...jpg)",
    ),
    "synthcc": Source(
        "synthcc (generated by this plugin)", "synthcc",
        "Nothing to download: generate it locally with `clip3dreid-build-synthcc --root ROOT` "
        "(the quickstart does this).",
        "synthcc/\n  train/<pid:04d>_<outfit:02d>_c<cam>_<k:03d>.png\n  query/...png\n  gallery/...png\n  meta.json",
    ),
    "ccmanifest": Source(
        "your own data (a manifest CSV)", ".",
        "Nothing to download: list your images in ROOT/manifest.csv (see docs/datasets.md, 'Your own data').",
        "manifest.csv   (path,pid,camid,clothes_id,split; paths relative to ROOT)\n  <your images>",
    ),
    "ccda": Source(
        "CCDA (Liu et al., ICCV 2023, 3DInvarReID)", "CCDA",
        "No public download is known: request it from the 3DInvarReID authors (Liu et al., ICCV 2023).",
        _CELEB_TREE.format(d="CCDA"),
    ),
    "vcclothes": Source(
        "VC-Clothes (Wang et al., CVPRW 2020)", "VC-Clothes",
        "Distributed on request: see https://wanfb.github.io/dataset.html.",
        "VC-Clothes/\n  train/<pid>-<cam>-<clothes>-<frame>.jpg\n  query/...jpg\n  gallery/...jpg",
    ),
    "last": Source(
        "LaST (Shu et al., TCSVT 2022)", "last",
        "Public Google Drive archive from https://github.com/shuxjweb/last: "
        "https://drive.google.com/file/d/1w_TfMx4NBVJfjVGxzKqVHPTxhKj6gQqK/view "
        "(BaiduPan mirror in the same README).",
        "last/\n  train/<pid>/<pid>_..._<outfit>.jpg\n  val/query/*.jpg    val/gallery/<pid>/*.jpg\n"
        "  test/query/*.jpg   test/gallery/<pid>/*.jpg",
        gdrive_id="1w_TfMx4NBVJfjVGxzKqVHPTxhKj6gQqK",
    ),
    "ccvid": Source(
        "CCVID (Gu et al., CVPR 2022)", "CCVID",
        "Public Google Drive archive from https://github.com/guxinqian/Simple-CCReID: "
        "https://drive.google.com/file/d/1vkZxm5v-aBXa_JEi23MMeW4DgisGtS4W/view (BaiduYun mirror there too).",
        "CCVID/\n  session1/<pid>_<cam>/<frame>.jpg\n  session2/...\n  session3/...\n"
        "  train.txt  query.txt  gallery.txt   (lines: session1/001_01 001 u0_l0_s0_c0_a0)",
        gdrive_id="1vkZxm5v-aBXa_JEi23MMeW4DgisGtS4W",
    ),
}
# The camera-subset variants read the same files as their parent dataset.
ALIASES = {"vcclothes_sc": "vcclothes", "vcclothes_cc": "vcclothes"}


def instructions(name: str, root: str) -> str:
    """Text telling how to obtain ``name`` and the tree expected under ``root``."""
    src = SOURCES[name]
    tree = "\n".join("  " + line for line in src.tree.splitlines())
    return (
        f"{src.title}\n"
        f"How to get it:\n  {src.how.replace('ROOT', root)}\n"
        f"Expected tree under {root}:\n{tree}\n"
        f"Check it with: clip3dreid-dataset-info --dataset {name} --root {root}"
    )


class UnsafeArchiveError(UserError, ValueError):
    """An archive member would land outside the destination folder, or is a link or device file."""


def _check_members(archive: str, dest: str, members: Sequence[tuple]) -> None:
    """Refuses the whole archive at its first unsafe member, so nothing of it is written.

    Args:
        archive: the archive, for the message.
        dest: the destination folder, for the message.
        members: ``(name, kind, link_target)`` with ``kind`` in ``file|dir|symlink|hardlink|other``.
    """
    for name, kind, link in members:
        why = None
        if not stays_inside(name):
            why = "has an absolute path or a '..' component"
        elif kind == "other":
            why = "is a device, FIFO or other special file"
        elif kind in ("symlink", "hardlink") and not stays_inside(link):
            why = f"is a link to '{link}', which may point outside the destination"
        if why:
            raise UnsafeArchiveError(f"refusing to extract '{archive}': member '{name}' {why} ({dest}); "
                                     "nothing was extracted")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink"
    if info.is_dir():
        return "dir"
    # no file-type bits (archives made on Windows, or by zipfile.writestr) is a regular file
    return "file" if stat.S_IFMT(mode) in (0, stat.S_IFREG) else "other"


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.isdir():
        return "dir"
    return "file" if info.isfile() else "other"


def extract(archive: str, dest: str) -> bool:
    """Unpacks a zip or tar archive into ``dest``; returns False when the format is not supported.

    Every member is checked before anything is written: a member with an absolute path, one that leaves ``dest``
    through ``..``, a link pointing out of ``dest``, or a special file stops the extraction.

    Raises:
        UnsafeArchiveError: naming the archive and the member.
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            kinds = [_zip_kind(m) for m in members]
            # zipfile would write a link as a file holding its target; refuse links so none is ever followed
            _check_members(archive, dest, [(m.filename, kind, zf.read(m).decode("utf-8", "replace")
                                            if kind == "symlink" else "") for m, kind in zip(members, kinds)])
            for member in progress(members, total=len(members), desc="extracting"):
                zf.extract(member, dest)
        return True
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            _check_members(archive, dest, [(m.name, _tar_kind(m), m.linkname) for m in members])
            # The "data" filter, where Python has it, repeats the same checks inside tarfile itself.
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            for member in progress(members, total=len(members), desc="extracting"):
                tf.extract(member, dest, **kw)
        return True
    return False


def download(name: str, root: str, sha256: Optional[str] = None) -> int:
    """Fetches ``name`` with gdown and unpacks it under ``root``; returns an exit status.

    Args:
        name: a key of :data:`SOURCES`.
        root: the folder that will hold the dataset folder.
        sha256: the archive's expected SHA-256 (hex); a different archive is kept but not extracted.
    """
    # gdown is needed only to download (instructions and extraction do without it)
    import gdown


    src = SOURCES[name]
    os.makedirs(root, exist_ok=True)
    logger.info("downloading %s (Google Drive id %s) into %s", src.title, src.gdrive_id, root)
    try:
        path = gdown.download(id=src.gdrive_id, output=root + os.sep, quiet=False)
    except Exception as err:  # gdown raises many types (network, quota, HTML pages)
        logger.error("download of %s failed: %s", name, err)
        path = None
    if not path or not osp.isfile(path):
        print(instructions(name, root))
        return 1
    digest = file_sha256(path)
    # sha256sum's format, so that `sha256sum -c` can check the archive later
    print(f"{digest}  {path}")
    if sha256 and digest != sha256.strip().lower():
        logger.error("'%s' has SHA-256 %s, not the %s given with --sha256: not extracted (delete it to retry)",
                     path, digest, sha256.strip().lower())
        return 1
    logger.info("extracting %s", path)
    try:
        ok = extract(path, root)
    except UnsafeArchiveError as err:
        logger.error("%s", err)
        return 1
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as err:
        logger.error("cannot extract '%s': %s", path, err)
        ok = False
    if not ok:
        logger.error("'%s' is not a zip/tar archive the script can unpack: extract it under %s by hand", path, root)
        print(instructions(name, root))
        return 1
    target = osp.join(root, src.dataset_dir)
    if not osp.isdir(target):
        logger.error("after extraction '%s' is missing: move the extracted folder there", target)
        print(instructions(name, root))
        return 1
    logger.info("%s is ready at %s (archive kept at %s)", name, target, path)
    return 0


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    names = sorted(SOURCES) + sorted(ALIASES)
    parser = CLIParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=names)
    parser.add_argument("--root", required=True, help="folder that will hold the dataset folder")
    parser.add_argument("--no-download", action="store_true", help="only print instructions and the expected tree")
    parser.add_argument("--sha256", default=None, metavar="HEX",
                        help="expected SHA-256 of the downloaded archive (printed after every download); "
                             "a different archive is not extracted")
    args = parser.parse_args(argv)
    if args.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256.strip()):
        parser.error(f"--sha256 takes the 64 hex digits of a SHA-256, got '{args.sha256}'")
    start_cli(stream=sys.stderr)

    name = ALIASES.get(args.dataset, args.dataset)
    root = osp.abspath(osp.expanduser(args.root))
    src = SOURCES[name]
    target = osp.join(root, src.dataset_dir)
    if osp.isdir(target) and os.listdir(target):
        logger.info("%s already present at %s; nothing to do", name, target)
        return 0
    if src.gdrive_id is None or args.no_download:
        print(instructions(name, root))
        return 0
    return download(name, root, args.sha256)


if __name__ == "__main__":
    sys.exit(main())
