"""WordNet for METEOR, set up offline from the system's WordNet files."""

import shutil
from pathlib import Path

import nltk
import pytest
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.corpus.util import LazyCorpusLoader

from superhf_lab.metrics import wordnet
from superhf_lab.metrics.wordnet import (
    SYSTEM_WORDNET_DIRS,
    EnglishWordNet,
    WordNetUnavailable,
    english_wordnet,
    ensure_wordnet,
    install_from_system,
    lexnames_text,
)

SYSTEM_DIR = next((d for d in SYSTEM_WORDNET_DIRS if (d / "data.noun").is_file()), None)


def test_lexnames_is_the_standard_45_line_list():
    lines = lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[-1] == "44\tadj.ppl\t3"


@pytest.mark.skipif(SYSTEM_DIR is None, reason="no system WordNet (apt-get install wordnet-base wordnet-sense-index)")
def test_system_wordnet_files_become_a_readable_nltk_corpus(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])  # nltk reads only its data dirs
    target = install_from_system(SYSTEM_DIR, tmp_path)
    assert target == tmp_path / "corpora" / "wordnet"
    reader = WordNetCorpusReader(str(target), None)
    assert "dog.n.01" in {synset.name() for synset in reader.synsets("dog")}
    assert not (tmp_path / "corpora" / "wordnet.partial").exists()


def test_a_failed_download_reaches_the_user_when_wordnet_is_still_missing(tmp_path: Path, monkeypatch):
    """No WordNet anywhere nltk looks (an empty data folder, no system files, a corpus loader not loaded yet) and a
    download that fails: the error says how to install WordNet and why the download did not."""
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk_data"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    monkeypatch.setattr(wordnet, "SYSTEM_WORDNET_DIRS", (tmp_path / "no_system_wordnet",))
    monkeypatch.setattr(wordnet, "english_wordnet", lambda: LazyCorpusLoader("wordnet", EnglishWordNet, None))
    offline = OSError("[Errno -3] Temporary failure in name resolution")

    def download(*args, **kwargs):
        raise offline

    monkeypatch.setattr(nltk, "download", download)
    with pytest.raises(WordNetUnavailable) as caught:
        wordnet.ensure_wordnet()
    message = str(caught.value)
    assert message.startswith(wordnet.INSTALL_HELP), "how to install it, as before"
    assert f"Downloading it into {tmp_path / 'nltk_data'} failed: OSError: {offline}" in message
    assert caught.value.__cause__ is offline


def _lookups(reader, word: str) -> list:
    return [(synset.name(), [lemma.name() for lemma in synset.lemmas()]) for synset in reader.synsets(word)]


def test_the_faster_reader_parses_and_looks_up_what_nltks_reader_does(tmp_path, monkeypatch):
    """METEOR's WordNet stage reads each stem's synsets and their lemma names: the faster reader, whether it parsed
    the index or read it back from the cache, holds nltk's parsed index and gives nltk's lookups, in nltk's order,
    for inflected forms (morphy), adjective satellites, unknown words and every 400th lemma of the index."""
    ensure_wordnet()
    from nltk.corpus import wordnet as nltk_wordnet

    nltk_wordnet.ensure_loaded()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    parsed = english_wordnet.__wrapped__()  # a reader of its own, loaded on first use: it finds no cache
    parsed.ensure_loaded()
    assert len(list((tmp_path / "superhf_lab").glob("wordnet-index-*.marshal"))) == 1, "the parsed index is kept"

    def parse(*args):
        raise AssertionError("the index was parsed although the cache holds it")

    monkeypatch.setattr(WordNetCorpusReader, "_load_lemma_pos_offset_map", parse)
    cached = english_wordnet.__wrapped__()
    cached.ensure_loaded()
    words = ["dogs", "ran", "better", "geese", "happier", "was", "automobil", "quickly", "running", "glad", "xqzv"]
    words += sorted(nltk_wordnet._lemma_pos_offset_map)[::400]
    expected = [_lookups(nltk_wordnet, word) for word in words]
    for reader in (parsed, cached):
        assert isinstance(reader, EnglishWordNet) and reader.get_version() == nltk_wordnet.get_version() == "3.0"
        assert reader.satellite_offsets == nltk_wordnet.satellite_offsets
        assert reader._lemma_pos_offset_map == nltk_wordnet._lemma_pos_offset_map
        assert reader._exception_map == nltk_wordnet._exception_map
        assert [_lookups(reader, word) for word in words] == expected


def test_a_changed_wordnet_is_parsed_again_rather_than_read_from_its_old_cache(tmp_path, monkeypatch):
    ensure_wordnet()
    source = Path(english_wordnet().root.path)
    corpus = tmp_path / "nltk_data" / "corpora" / "wordnet"
    shutil.copytree(source, corpus)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    english_wordnet.__wrapped__().ensure_loaded()
    with (corpus / "verb.exc").open("a") as exceptions:
        exceptions.write("zzzed zzz\n")
    changed = english_wordnet.__wrapped__()
    assert changed._exception_map["v"]["zzzed"] == ["zzz"]
    assert len(list((tmp_path / "cache" / "superhf_lab").glob("wordnet-index-*.marshal"))) == 2
