"""Custom Streamlit components of the app (plain HTML/CSS/JS files, no build step, no network)."""
