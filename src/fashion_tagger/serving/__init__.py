"""The HTTP service: `create_app(Settings(run_dir=...))` gives a FastAPI app (see `app.py`).

Nothing is imported here, so `import fashion_tagger.serving` stays cheap and needs no extra.
"""
