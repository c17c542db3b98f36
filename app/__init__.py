"""The Gradio web app (issue #5). Nothing here yet: the app is built by a factory, nothing loads at import."""
