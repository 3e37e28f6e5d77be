"""The Streamlit app. It calls ``vitsearch.search``, ``vitsearch.store`` and ``vitsearch.app``
only: no SQL, no FAISS, no torch here."""
