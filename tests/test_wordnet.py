"""WordNet for METEOR, set up offline from the system's WordNet files."""

from pathlib import Path

import nltk
import pytest
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from superhf_lab.wordnet import SYSTEM_WORDNET_DIRS, install_from_system, lexnames_text

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
