"""The Gradio web app (issue #5): `python -m app`, or `build_demo(settings)` from `app.ui`.

Nothing is loaded at import: the page is built by a factory, and models load on the first request.
"""
