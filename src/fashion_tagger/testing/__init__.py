"""Test doubles users may run too: the fake marketplace (`testing.fake_marketplace`).

They ship with the package, not with the tests, so that anyone can try the crawler offline or
benchmark it without touching a real site; no data source imports them.
"""
