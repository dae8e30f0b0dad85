"""The Noto colour emoji font the toy world draws its objects with (offline-assets.md §4).

Lookup order: ``PRUNELAB_EMOJI_FONT`` (an explicit file), the system copy installed by Debian's
``fonts-noto-color-emoji``, then a private unpack of that same package under the cache (fetched on demand with
``apt-get download`` + ``dpkg -x`` by :func:`prunelab.assets.debian.fetch_deb`, so nothing in ``/usr`` changes).
Debian bookworm ships upstream release 2.042; the committed test-split checksum was made with that file, and
:func:`font_sha256` lets :mod:`prunelab.toyworld.splits` say so when a different font is found.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from prunelab.errors import AssetError
from prunelab.paths import cache_dir

DEBIAN_PACKAGE = "fonts-noto-color-emoji"
FONT_RELPATH = Path("usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
SYSTEM_FONT = Path("/") / FONT_RELPATH
#: The bitmap strikes of NotoColorEmoji are 136x128 px at this size; other sizes are scaled by FreeType.
NATIVE_SIZE = 109
ENV_VAR = "PRUNELAB_EMOJI_FONT"


def _cached_font() -> Path:
    return cache_dir("debian", create=False) / DEBIAN_PACKAGE / FONT_RELPATH


def candidate_paths() -> list[Path]:
    """Where :func:`ensure_emoji_font` looks, in order (without fetching)."""
    out = []
    if os.environ.get(ENV_VAR):
        out.append(Path(os.environ[ENV_VAR]))
    out += [SYSTEM_FONT, _cached_font()]
    return out


def find_emoji_font() -> Path | None:
    """The first existing font file among :func:`candidate_paths`, or ``None``."""
    for p in candidate_paths():
        if p.is_file():
            return p
    return None


def ensure_emoji_font(fetch: bool = True) -> Path:
    """Return the path of ``NotoColorEmoji.ttf``, unpacking Debian's package into the cache if needed.

    Idempotent: a second call finds the cached file and does nothing. When ``PRUNELAB_EMOJI_FONT`` is set it
    must point at an existing file (no silent fallback). Raises :class:`AssetError` (one line, with the fix)
    when the font is absent and cannot be fetched.
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if Path(explicit).is_file():
            return Path(explicit)
        raise AssetError(
            f"{ENV_VAR}={explicit} does not exist; point it at NotoColorEmoji.ttf or unset it to use "
            f"Debian's {DEBIAN_PACKAGE}"
        )
    found = find_emoji_font()
    if found is not None:
        return found
    reason = "fetching disabled"
    if fetch:
        from prunelab.assets.debian import fetch_deb

        try:
            root = fetch_deb(DEBIAN_PACKAGE)
        except AssetError as err:
            reason = str(err).split(";")[0]
        else:
            if (root / FONT_RELPATH).is_file():
                return root / FONT_RELPATH
            reason = f"the unpacked package has no {FONT_RELPATH.name}"
    raise AssetError(
        f"Noto colour emoji font not found ({SYSTEM_FONT} absent; {reason}); run `apt-get install {DEBIAN_PACKAGE}` "
        f"(or `python -m prunelab.assets.setup_assets` with Debian's package lists reachable) or set {ENV_VAR}=/path/to/NotoColorEmoji.ttf"
    )


@functools.lru_cache(maxsize=4)
def _sha256(path: str, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def font_sha256(path: Path | None = None) -> str:
    """sha256 of the font file in use (recorded next to the test-split checksum)."""
    p = Path(path) if path is not None else ensure_emoji_font()
    return _sha256(str(p), p.stat().st_mtime)


@functools.lru_cache(maxsize=8)
def _load(path: str, size: int):
    from PIL import ImageFont

    try:
        return ImageFont.truetype(path, size)
    except OSError as err:
        raise AssetError(
            f"cannot open emoji font {path} ({err}); delete it and rerun `python -m prunelab.assets.setup_assets`"
        ) from err


def load_emoji_font(size: int = NATIVE_SIZE):
    """A Pillow ``FreeTypeFont`` for the emoji font (cached per size). Only the native 109 px renders sharply."""
    return _load(str(ensure_emoji_font()), int(size))
