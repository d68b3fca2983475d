"""A headless Chromium (Debian's chromium-headless-shell) for the report's tests: the page's DOM
after its scripts ran, and a screenshot. No network: every host name resolves to nothing and
every request goes to a closed loopback proxy, so a page that needed the network would show it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

BINARY = "chromium-headless-shell"
_OFFLINE = ["--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-domain-reliability",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
            "--virtual-time-budget=15000"]


def _run(page: Path, profile: Path, *args: str) -> str:
    binary = shutil.which(BINARY)
    assert binary is not None, f"{BINARY} is not installed (tools/dev.sh installs it)"
    proc = subprocess.run([binary, *_OFFLINE, f"--user-data-dir={profile}", *args,
                           page.absolute().as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def dump_dom(page: Path, profile: Path) -> str:
    """The page's DOM as HTML after its scripts ran."""
    return _run(page, profile, "--dump-dom")


def screenshot(page: Path, png: Path, profile: Path, size: tuple[int, int] = (1400, 2400)
               ) -> tuple[int, int]:
    """A PNG of the page's top ``size`` pixels; returns its width and height (from IHDR)."""
    _run(page, profile, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", png
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@dataclass(eq=False)
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    parents: tuple[Element, ...] = field(default=(), repr=False)  # outermost first

    def inside(self, **attrs: str) -> bool:
        """Whether an enclosing element has these attributes (``data_host`` for data-host)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return any(all(p.attrs.get(k) == v for k, v in want.items()) for p in self.parents)

    def all_text(self, dom: Dom) -> str:
        """Its text and its descendants'."""
        return self.text + "".join(e.text for e in dom.elements if self in e.parents)


@dataclass
class Dom(HTMLParser):
    """Every element of a page with its attributes, own text and enclosing ids (stdlib only)."""

    elements: list[Element] = field(default_factory=list)
    _stack: list[tuple[str, Element]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    _VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "area", "base",
                       "source", "wbr", "path", "rect", "line", "circle", "stop", "use"})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs},
                          parents=tuple(e for _, e in self._stack))
        self.elements.append(element)
        if tag not in self._VOID:
            self._stack.append((tag, element))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs},
                                     parents=tuple(e for _, e in self._stack)))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if self._stack:
            self._stack[-1][1].text += data

    @classmethod
    def parse(cls, html: str) -> Dom:
        dom = cls()
        dom.feed(html)
        dom.close()
        return dom

    def find(self, tag: str | None = None, within: str | None = None, **attrs: str
             ) -> list[Element]:
        """Elements with this tag (any: None), inside the element of id ``within``, whose
        attributes (``data_host`` for data-host) have these values."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [e for e in self.elements
                if (tag is None or e.tag == tag)
                and (within is None or e.inside(id=within))
                and all(e.attrs.get(k) == v for k, v in want.items())]
