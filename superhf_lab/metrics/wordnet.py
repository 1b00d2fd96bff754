"""Make WordNet available to nltk's METEOR without the internet.

Order tried: nltk data already installed; the system's WordNet 3.0 files (Debian/Ubuntu packages
``wordnet-base`` and ``wordnet-sense-index``) copied into an nltk data folder; ``nltk.download`` (whose error, when
WordNet is still missing, ends the message of :class:`WordNetUnavailable`).
Run ``python -m superhf_lab.metrics.wordnet`` once (``make install`` does) to set it up.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import marshal
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nltk
from nltk.corpus.reader import CorpusReader
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.corpus.util import LazyCorpusLoader

SYSTEM_WORDNET_DIRS = (Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet"))
INSTALL_HELP = (
    "WordNet (needed by METEOR) is not installed. Either run "
    "`sudo apt-get install wordnet-base wordnet-sense-index && python -m superhf_lab.metrics.wordnet`, "
    "or with internet `python -c \"import nltk; nltk.download('wordnet')\"`."
)

# The standard WordNet 3.0 list of lexicographer files; Debian's packages do not ship it.
_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_SYNTACTIC_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
_REQUIRED_FILES = [f"{kind}.{pos}" for kind in ("index", "data") for pos in ("adj", "adv", "noun", "verb")]
_OPTIONAL_FILES = ["adj.exc", "adv.exc", "noun.exc", "verb.exc", "index.sense", "cntlist.rev"]


class WordNetUnavailable(RuntimeError):
    """WordNet could not be found, installed from system files, or downloaded."""


def lexnames_text() -> str:
    """The ``lexnames`` file: number, lexicographer file name, syntactic category number."""
    return "".join(
        f"{number:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for number, name in enumerate(_LEXNAMES)
    )


class EnglishWordNet(WordNetCorpusReader):
    """nltk's WordNet reader, loaded in a tenth of the time, with every lookup nltk's (``tests/test_wordnet.py``
    compares synsets, lemma names and the parsed index with nltk's reader). Two differences, both in the load:

    - nltk's reader maps WordNet 3.0's senses onto the loaded WordNet's for the Open Multilingual WordNet, reading
      ``index.sense`` twice (about 60% of its load), and does so for WordNet 3.0 itself, as it compares the version
      "3.0" with the name "wordnet". That map is the identity, which nltk's ``map_wn`` returns as None when the
      versions are equal; here it does so for 3.0 too.
    - The index nltk parses on every load (adjective satellites, lemma offsets, exceptions: most of the rest) is
      kept in the user's cache, keyed by the files it comes from and the nltk and Python versions, and read from
      there by later loads.
    """

    INDEX_FILES = ("data.adj", *(f"index.{pos}" for pos in ("noun", "verb", "adj", "adv")))
    INDEX_FILES += tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))

    def map_wn(self, version: str = "wordnet"):
        return None if self.get_version() == "3.0" else super().map_wn(version)

    # nltk's __init__ parses the index with these three, in this order.
    def _scan_satellites(self) -> None:
        self._index_cache = parsed_index_cache(self)
        cached = read_parsed_index(self._index_cache)
        if cached is None:
            super()._scan_satellites()
            return
        self.satellite_offsets, lemma_pos_offsets, self._exception_map = cached
        self._lemma_pos_offset_map.update(lemma_pos_offsets)

    def _load_lemma_pos_offset_map(self) -> None:
        if not self._lemma_pos_offset_map:
            super()._load_lemma_pos_offset_map()

    def _load_exception_map(self) -> None:
        if not self._exception_map:
            super()._load_exception_map()
            parsed = (self.satellite_offsets, dict(self._lemma_pos_offset_map), self._exception_map)
            write_parsed_index(self._index_cache, parsed)


def parsed_index_cache(reader: WordNetCorpusReader) -> Path:
    """Where the parsed index of ``reader``'s WordNet is kept: named by a hash of its index files, nltk's version
    (the parse) and Python's (marshal's format)."""
    digest = hashlib.sha256(f"{nltk.__version__} {sys.version_info[:2]}".encode())
    for name in EnglishWordNet.INDEX_FILES:
        with reader.root.join(name).open() as index_file:
            digest.update(index_file.read())
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "superhf_lab"
    return folder / f"wordnet-index-{digest.hexdigest()[:16]}.marshal"


def read_parsed_index(path: Path) -> tuple | None:
    """The parsed index kept at ``path``, or None when there is none (or it is not one: it is then parsed again)."""
    collecting = gc.isenabled()
    gc.disable()  # half a million objects at once: the collector would walk them again and again as they arrive
    try:
        parsed = marshal.loads(path.read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    finally:
        if collecting:
            gc.enable()
    shapes = (set, dict, dict)
    if not isinstance(parsed, tuple) or len(parsed) != 3 or not all(map(isinstance, parsed, shapes)):
        return None
    return parsed


def write_parsed_index(path: Path, parsed: tuple) -> None:
    """Keep the parsed index at ``path``, written whole or not at all; a cache that cannot be written is skipped."""
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as partial:
            partial.write(marshal.dumps(parsed))
        os.replace(partial.name, path)
    except OSError:
        if partial is not None:
            Path(partial.name).unlink(missing_ok=True)


@functools.cache
def english_wordnet() -> EnglishWordNet:
    """This process's WordNet reader for METEOR, found as ``nltk.corpus.wordnet`` is found and loaded on first use
    (a load that finds no WordNet raises ``LookupError``, and the next use looks again)."""
    multilingual = LazyCorpusLoader("omw-2.0", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8")
    return LazyCorpusLoader("wordnet", EnglishWordNet, multilingual)


def wordnet_loads() -> bool:
    """True when nltk can read WordNet from one of its data folders."""
    try:
        return bool(english_wordnet().synsets("dog"))
    except LookupError:
        return False


def default_nltk_data_dir() -> Path:
    """$NLTK_DATA if set, else the active environment's ``nltk_data`` (on nltk's default path)."""
    return Path(os.environ.get("NLTK_DATA", "").split(os.pathsep)[0] or Path(sys.prefix) / "nltk_data")


def install_from_system(source: Path, nltk_data_dir: Path) -> Path:
    """Copy system WordNet files into ``<nltk_data_dir>/corpora/wordnet`` (atomically) and add lexnames."""
    missing = [name for name in _REQUIRED_FILES if not (source / name).is_file()]
    if missing:
        raise WordNetUnavailable(f"{source} lacks WordNet files {missing}. {INSTALL_HELP}")
    target = nltk_data_dir / "corpora" / "wordnet"
    staging = target.with_name("wordnet.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in _REQUIRED_FILES + _OPTIONAL_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, staging / name)
    (staging / "lexnames").write_text(lexnames_text())
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def ensure_wordnet() -> None:
    """Make ``nltk.corpus.wordnet`` loadable, or raise :class:`WordNetUnavailable` saying how."""
    if wordnet_loads():
        return
    import nltk

    data_dir = default_nltk_data_dir()
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_dir))
    download_error = None
    for source in SYSTEM_WORDNET_DIRS:
        if (source / "data.noun").is_file():
            install_from_system(source, data_dir)
            break
    else:
        try:
            nltk.download("wordnet", download_dir=str(data_dir), quiet=True, raise_on_error=True)
        except Exception as error:  # offline: nltk raises assorted network errors; kept for the message below
            download_error = error
    if not wordnet_loads():
        why = (
            ""
            if download_error is None
            else (f" Downloading it into {data_dir} failed: {type(download_error).__name__}: {download_error}")
        )
        raise WordNetUnavailable(INSTALL_HELP + why) from download_error


if __name__ == "__main__":
    ensure_wordnet()
    print("WordNet is ready for METEOR.")
