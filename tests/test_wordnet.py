"""WordNet for METEOR, set up offline from the system's WordNet files."""

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


def test_the_faster_reader_looks_up_what_nltks_reader_does():
    """METEOR's WordNet stage reads each stem's synsets and their lemma names: the reader that skips the multilingual
    sense map gives nltk's, in nltk's order, for inflected forms (morphy), adjective satellites and unknown words,
    and for every 400th lemma of WordNet's index."""
    ensure_wordnet()
    from nltk.corpus import wordnet as nltk_wordnet

    ours = english_wordnet()
    assert isinstance(ours, EnglishWordNet) and ours.get_version() == nltk_wordnet.get_version() == "3.0"
    words = ["dogs", "ran", "better", "geese", "happier", "was", "automobil", "quickly", "running", "glad", "xqzv"]
    words += sorted(nltk_wordnet._lemma_pos_offset_map)[::400]

    def lookups(reader, word):
        return [(synset.name(), [lemma.name() for lemma in synset.lemmas()]) for synset in reader.synsets(word)]

    assert [lookups(ours, word) for word in words] == [lookups(nltk_wordnet, word) for word in words]
