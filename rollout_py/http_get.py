"""One HTTP GET through libcurl (pycurl): what the probes, the continuous watch and the version
reads of a deploy send, a few per host.

libcurl does the connection, TLS, the request and the response parsing in C, with Python's GIL
released: under 32 threads a GET costs the controller 0.21 ms of CPU against 0.40 ms with
Python's http.client (``benchmarks/http_get.py``, in the README), and the probes are the
largest part of the controller's work that grows with the fleet. Each thread keeps one curl
handle for its GETs (the same options for every GET, set when it is made; a GET sets only its
URL, timeout and body buffer); never a kept connection: a server that closes it late (a loaded
host) or an app restarted between probes would fail the next GET that reused it.

Failures come back as Python's own exceptions (ConnectionRefusedError, TimeoutError,
ssl.SSLCertVerificationError, http.client.RemoteDisconnected, ...), so a probe's reason reads
as it would from the standard library.
"""

from __future__ import annotations

import email.message
import errno
import functools
import http.client
import io
import os
import ssl
import threading
from urllib.parse import urlsplit

import pycurl
from requests.utils import DEFAULT_CA_BUNDLE_PATH

_local = threading.local()


def _handle() -> pycurl.Curl:
    """This thread's curl handle, made with what every GET of it shares."""
    curl: pycurl.Curl | None = getattr(_local, "curl", None)
    if curl is None:
        curl = _local.curl = pycurl.Curl()
        curl.setopt(pycurl.HTTPGET, 1)
        curl.setopt(pycurl.HTTPHEADER, ["Connection: close"])
        curl.setopt(pycurl.PROXY, "")  # "" = no proxy, whatever http_proxy says
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.FORBID_REUSE, 1)
        curl.setopt(pycurl.FRESH_CONNECT, 1)
        curl.setopt(pycurl.DNS_CACHE_TIMEOUT, 0)
        curl.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for name-lookup timeouts
        curl.setopt(pycurl.CAINFO, DEFAULT_CA_BUNDLE_PATH)
        curl.setopt(pycurl.CAPATH, None)  # the bundle alone decides, as the probes always did
        curl.setopt(pycurl.HTTPAUTH, pycurl.HTTPAUTH_BASIC)
    return curl


@functools.lru_cache(maxsize=64)
def _charset(content_type: str | None) -> str:
    """The response's charset as http.client reads it (email's parameter parsing), else UTF-8."""
    if not content_type:
        return "utf-8"
    message = email.message.Message()
    message["Content-Type"] = content_type
    return message.get_content_charset() or "utf-8"


def _error(exc: pycurl.error, curl: pycurl.Curl, url: str) -> Exception:
    """The exception Python's socket/ssl/http.client would have raised for curl's failure."""
    code, message = exc.args[0], str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return TimeoutError(f"timed out ({message})")
    if code == pycurl.E_PEER_FAILED_VERIFICATION:
        return ssl.SSLCertVerificationError(message)
    if code in (pycurl.E_SSL_CONNECT_ERROR, pycurl.E_SSL_CERTPROBLEM, pycurl.E_SSL_CIPHER,
                pycurl.E_SSL_CACERT_BADFILE):
        return ssl.SSLError(message)
    if code == pycurl.E_GOT_NOTHING:
        return http.client.RemoteDisconnected("Remote end closed connection without response")
    if code == pycurl.E_URL_MALFORMAT:
        return ValueError(f"{message}: {url}")
    # Not an HTTP answer, or cut short (8 is CURLE_WEIRD_SERVER_REPLY, by its old FTP name in
    # pycurl; 1 is an HTTP/0.9 answer: the scheme itself was checked before)
    if code in (pycurl.E_FTP_WEIRD_SERVER_REPLY, pycurl.E_UNSUPPORTED_PROTOCOL,
                pycurl.E_PARTIAL_FILE, pycurl.E_HTTP2):
        return http.client.HTTPException(message)
    os_errno = curl.getinfo(pycurl.OS_ERRNO)
    if os_errno and os_errno != errno.EINPROGRESS:
        return OSError(os_errno, os.strerror(os_errno))  # the errno's own subclass
    return OSError(message)


def http_get(url: str, timeout: float) -> tuple[int, str]:
    """GET ``url``: its status and its body as text (the response's charset, else UTF-8).

    A new connection each call, sent with ``Connection: close`` and closed after it. No proxy
    from the environment, certificates checked against the CA bundle requests uses (and no
    other), no redirects followed; credentials in the URL go as Basic auth.
    Raises OSError, ValueError (not an http(s) URL) or http.client.HTTPException.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    curl = _handle()
    body = io.BytesIO()
    ms = max(1, int(timeout * 1000))
    curl.setopt(pycurl.URL, url)
    curl.setopt(pycurl.WRITEDATA, body)
    curl.setopt(pycurl.CONNECTTIMEOUT_MS, ms)
    curl.setopt(pycurl.TIMEOUT_MS, ms)
    try:
        curl.perform()
    except pycurl.error as exc:
        raise _error(exc, curl, url) from None
    finally:
        curl.setopt(pycurl.WRITEDATA, io.BytesIO())  # let go of this call's body
    status = int(curl.getinfo(pycurl.RESPONSE_CODE))
    content_type = curl.getinfo(pycurl.CONTENT_TYPE)
    charset = _charset(content_type if isinstance(content_type, str) else None)
    data = body.getvalue()
    try:
        return status, data.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return status, data.decode("utf-8", errors="replace")
