"""The example sites of the routing tests.

``test_site.py`` decides their URLs in-process (``Site.decide``); ``test_production.py``
serves them over real sockets in every worker model, for what needs a socket.
"""

from __future__ import annotations

from pathlib import Path

from test_rules import EXAMPLE_FILES, EXAMPLE_HEADERS, EXAMPLE_REDIRECTS

XSS_NAME = "<img src=x onerror=alert(1)>"


def page(title: str) -> str:
    return (
        f"<!doctype html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1></body></html>\n"
    )


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- sites -----------------------------------------------------------------------------
# The clean-URL states of resolver.py's docstring table, each in its own directory
# under /clean/, and what /about, /about/ and /about.html end up serving there after
# following every redirect: (status of the first response, final status, file served
# relative to the state's directory, or LISTING, or None for the 404 page).
LISTING = "<listing>"
CLEAN_STATES: dict[str, tuple[str, ...]] = {
    "nothing": (),
    "page": ("about.html",),
    "file": ("about",),
    "file-page": ("about", "about.html"),
    "index": ("about/index.html",),
    "index-page": ("about/index.html", "about.html"),
    "dir": ("about/other.txt",),
    "dir-page": ("about/other.txt", "about.html"),
}
CLEAN_OUTCOMES: dict[str, dict[str, tuple[int, int, str | None]]] = {
    "nothing": {
        "/about": (404, 404, None),
        "/about/": (404, 404, None),
        "/about.html": (404, 404, None),
    },
    "page": {
        "/about": (200, 200, "about.html"),
        "/about/": (308, 200, "about.html"),
        "/about.html": (200, 200, "about.html"),
    },
    "file": {
        "/about": (200, 200, "about"),
        "/about/": (404, 404, None),
        "/about.html": (404, 404, None),
    },
    "file-page": {
        "/about": (200, 200, "about"),
        "/about/": (404, 404, None),
        "/about.html": (200, 200, "about.html"),
    },
    "index": {
        "/about": (301, 200, "about/index.html"),
        "/about/": (200, 200, "about/index.html"),
        "/about.html": (404, 404, None),
    },
    "index-page": {
        "/about": (200, 200, "about.html"),
        "/about/": (200, 200, "about/index.html"),
        "/about.html": (200, 200, "about.html"),
    },
    "dir": {
        "/about": (301, 200, LISTING),
        "/about/": (200, 200, LISTING),
        "/about.html": (404, 404, None),
    },
    "dir-page": {
        "/about": (200, 200, "about.html"),
        "/about/": (308, 200, "about.html"),
        "/about.html": (200, 200, "about.html"),
    },
}


def build_general(root: Path) -> Path:
    write(root / "index.html", page("Home"))
    write(root / "404.html", page("Custom 404"))
    write(root / "about.html", page("About"))
    write(root / "style.css", "body { color: red }\n")
    write(root / "data.json", '{"a": 1}\n')
    write(root / "sub" / "index.html", page("Sub"))
    write(root / "sub" / "x.css", "p { margin: 0 }\n")
    lst = root / "list"
    write(lst / "a.txt", "aaa\n")
    write(lst / "b.txt", "bbb\n")
    write(lst / "file2.txt", "2\n")
    write(lst / "File10.txt", "x" * 1500)
    write(lst / XSS_NAME, "xss\n")
    write(lst / ".dotfile", "hidden\n")
    write(lst / ".dotdir" / "inner.txt", "hidden\n")
    write(lst / "zdir" / "z.txt", "z\n")
    write(lst / "Adir" / "a.txt", "a\n")
    for state, files in CLEAN_STATES.items():
        (root / "clean" / state).mkdir(parents=True)
        for name in files:
            text = page(f"{state} {name}") if name.endswith(".html") else f"{state} {name}\n"
            write(root / "clean" / state / name, text)
    return root


def build_spa(root: Path) -> Path:
    write(root / "index.html", page("SPA index"))
    write(root / "app.html", page("SPA app"))
    write(root / "404.html", page("SPA 404"))
    write(root / "real.html", page("Real page"))
    write(root / "style.css", "body { color: blue }\n")
    write(root / ".hidden", "secret\n")
    return root


RULES_EXTRA_FILES = (
    "static/app.js",
    "static/img/logo.png",
    "users/42/profile.html",
    "private/secret",
    "about/index.html",
)


def build_rules(root: Path) -> Path:
    for name in EXAMPLE_FILES + RULES_EXTRA_FILES:
        text = page(name) if name.endswith(".html") else f"file {name}\n"
        write(root / name, text)
    write(root / "_redirects", EXAMPLE_REDIRECTS)
    write(root / "_headers", EXAMPLE_HEADERS)
    return root
