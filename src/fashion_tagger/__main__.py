"""`python -m fashion_tagger` is `fashion-tagger`."""

from fashion_tagger.cli import main

main()
