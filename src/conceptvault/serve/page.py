"""The web page served at ``/`` (``page.html``): sign in with a token, generate with the concepts one holds
grants for, see one's history, and (for an administrator) add and revoke grants. Plain HTML and a little
JavaScript over the JSON API; every value from the server is inserted as text, never as HTML."""

from importlib import resources

PAGE = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
