"""Real photographs available offline, with the project's own object labels (offline-assets.md §3).

No registry ships MS-COCO images, so the study's real-photo set is assembled from files that come with packages:

* scikit-image's bundled images (``skimage/data/*.png|jpg``, read directly from the package folder; the
  ``skimage.data`` loaders that need ``pooch`` and a download are never called);
* matplotlib's ``mpl-data/sample_data/grace_hopper.jpg``;
* the examples data of Debian's ``opencv-doc`` (4.6.0+dfsg-12), unpacked with ``dpkg -x`` into
  ``cache/debian/opencv-doc`` by :func:`ensure_opencv_doc` (nothing is installed system-wide).

``data/photos/manifest.csv`` lists the 39 photos chosen by looking at each one: ``name``, ``source``
(``package:path``), ``complexity`` (``simple`` = one or two salient objects on a plain or blurred background,
else ``complex``; a judgement call), ``coco_objects`` (``;``-separated COCO category names clearly visible — the
project's labels, not an official annotation), ``note`` and the ``sha256`` of the file the labels were written for.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from prunelab.errors import AssetError, UnknownNameError
from prunelab.paths import cache_dir, data_dir
from prunelab.toyworld.coco import COCO_CATEGORIES

OPENCV_DOC_PACKAGE = "opencv-doc"
OPENCV_EXAMPLES = "usr/share/doc/opencv-doc/examples"
COMPLEXITIES = ("simple", "complex")
SOURCES = ("scikit-image", "matplotlib", "opencv-doc")


@dataclass(frozen=True)
class Photo:
    """One row of ``data/photos/manifest.csv``."""

    name: str
    source: str
    complexity: str
    coco_objects: tuple[str, ...]
    note: str
    sha256: str

    @property
    def package(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def relpath(self) -> str:
        return self.source.split(":", 1)[1]


def manifest_path() -> Path:
    return data_dir() / "photos" / "manifest.csv"


@functools.lru_cache(maxsize=4)
def _read_manifest(path: str) -> dict[str, Photo]:
    out: dict[str, Photo] = {}
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError:
        raise AssetError(
            f"photo manifest {path} is missing; restore data/photos/manifest.csv from the repository"
        ) from None
    with fh:
        for row in csv.DictReader(fh):
            objs = tuple(o.strip() for o in row["coco_objects"].split(";") if o.strip())
            out[row["name"]] = Photo(
                row["name"], row["source"], row["complexity"], objs, row["note"], row.get("sha256", "")
            )
    return out


def photo_manifest() -> dict[str, Photo]:
    """All photos of the manifest, in manifest order."""
    return dict(_read_manifest(str(manifest_path())))


def list_photos(complexity: str | None = None, source: str | None = None) -> list[str]:
    """Photo names in manifest order, optionally only ``complexity`` (``simple``/``complex``) or one ``source``
    package (``scikit-image``, ``matplotlib``, ``opencv-doc``)."""
    if complexity is not None and complexity not in COMPLEXITIES:
        raise UnknownNameError(f"unknown complexity {complexity!r}; use one of {', '.join(COMPLEXITIES)}")
    if source is not None and source not in SOURCES:
        raise UnknownNameError(f"unknown photo source {source!r}; use one of {', '.join(SOURCES)}")
    return [
        p.name
        for p in photo_manifest().values()
        if (complexity is None or p.complexity == complexity) and (source is None or p.package == source)
    ]


def photo_info(name: str) -> Photo:
    photos = photo_manifest()
    if name not in photos:
        raise UnknownNameError(f"unknown photo {name!r}; known photos: {', '.join(photos)}")
    return photos[name]


def photo_labels(name: str | None = None):
    """COCO categories visible in each photo: ``{name: [category, ...]}`` (or the list for one ``name``)."""
    if name is not None:
        return list(photo_info(name).coco_objects)
    return {p.name: list(p.coco_objects) for p in photo_manifest().values()}


def opencv_doc_dir() -> Path:
    """Where :func:`ensure_opencv_doc` unpacks the Debian package (``cache/debian/opencv-doc``)."""
    return cache_dir("debian", create=False) / OPENCV_DOC_PACKAGE


def ensure_opencv_doc() -> Path:
    """Unpack Debian ``opencv-doc`` into ``cache/debian/opencv-doc`` once (``apt-get download`` + ``dpkg -x``,
    no system-wide install) and return that folder. Idempotent; raises :class:`AssetError` with the manual fix."""
    from prunelab.assets.debian import fetch_deb

    dest = opencv_doc_dir()
    if not (dest / OPENCV_EXAMPLES / "data").is_dir():
        fetch_deb(OPENCV_DOC_PACKAGE, dest=dest)
    if not (dest / OPENCV_EXAMPLES / "data").is_dir():
        raise AssetError(
            f"{dest} holds no {OPENCV_EXAMPLES}/data; delete {dest} and run `python -m prunelab.assets.setup_assets` "
            f"(needs `apt-get download {OPENCV_DOC_PACKAGE}`)"
        )
    return dest


def photo_path(name: str, fetch: bool = True) -> Path:
    """The file of photo ``name``. Photos from opencv-doc fetch the package first when ``fetch`` (default)."""
    p = photo_info(name)
    if p.package == "scikit-image":
        import skimage

        path = Path(skimage.__file__).parent / p.relpath
    elif p.package == "matplotlib":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / p.relpath.removeprefix("mpl-data/")
    elif p.package == "opencv-doc":
        root = opencv_doc_dir()
        if not (root / OPENCV_EXAMPLES / "data").is_dir():
            if not fetch:
                raise AssetError(
                    f"photo {name!r} comes from Debian {OPENCV_DOC_PACKAGE}, which is not unpacked in {root}; "
                    f"run `python -m prunelab.assets.setup_assets` or prunelab.study.photos.ensure_opencv_doc() (uses apt-get download)"
                )
            try:
                root = ensure_opencv_doc()
            except AssetError as err:
                raise AssetError(
                    f"photo {name!r} needs Debian {OPENCV_DOC_PACKAGE}, which could not be fetched ({err}); "
                    f"fetch it with `apt-get download {OPENCV_DOC_PACKAGE}` + `dpkg -x <deb> {root}`"
                ) from None
        path = root / p.relpath
    else:  # pragma: no cover - guarded by the manifest test
        raise AssetError(f"photo {name!r} has unknown source package {p.package!r}; fix data/photos/manifest.csv")
    if not path.is_file():
        raise AssetError(
            f"photo {name!r} not found at {path}; the installed {p.package} lacks it — reinstall {p.package} "
            f"(or delete {opencv_doc_dir()} to unpack opencv-doc again)"
        )
    return path


def load_photo(name: str, verify: bool = True):
    """Photo ``name`` as an RGB ``PIL.Image`` (greyscale and RGBA files converted, see
    :func:`prunelab.models.vision.to_rgb`). With ``verify``, a file whose sha256 differs from the one the labels were
    written for gives a warning (another package version may ship a different picture)."""
    from prunelab.models.vision import load_image

    path = photo_path(name)
    info = photo_info(name)
    if verify and info.sha256:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != info.sha256:
            warnings.warn(
                f"photo {name!r} at {path} differs from the file its labels were written for "
                f"(sha256 {digest[:12]} != {info.sha256[:12]}); labels may not match",
                stacklevel=2,
            )
    return load_image(path, name=name)


__all__ = [
    "COCO_CATEGORIES",
    "Photo",
    "photo_manifest",
    "list_photos",
    "photo_info",
    "photo_labels",
    "opencv_doc_dir",
    "ensure_opencv_doc",
    "photo_path",
    "load_photo",
]
