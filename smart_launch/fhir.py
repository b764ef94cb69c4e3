"""The FHIR R4 REST client that carries the bearer token.

One instance per registration (its requests.Session pools connections). Safe to share
between threads: the session's pool is thread-safe and the client keeps no per-request
state. The token never leaves the registration's FHIR base: paging links and redirects
are checked before any request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin

import requests

from ._http import OWN_CREDENTIALS as OWN_CREDENTIALS  # the EHR sessions' default too
from ._http import is_under, json_or_none, outcome_text, parse_retry_after
from .errors import FatalFhirError, FhirError, FhirUnreachable, TemporaryFhirError, UnsafeUrl

log = logging.getLogger(__name__)

T = TypeVar("T")
TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
FHIR_JSON = "application/fhir+json"
MAX_REDIRECTS = 3
# Never sleep longer than this for a Retry-After inside a request; beyond it the caller
# (an RQ job) should reschedule instead of holding a worker.
MAX_RETRY_SLEEP = 30.0


def error_from_response(response: requests.Response, *, what: str) -> FhirError:
    """A typed FhirError for a non-2xx response. The message is ours; the EHR's own
    words (OperationOutcome text, or an OAuth-style ``error_description`` from a gateway)
    go to ``ehr_text``."""
    body = json_or_none(response)
    outcome = body if isinstance(body, dict) and body.get("resourceType") else None
    ehr_text = outcome_text(outcome)
    if ehr_text is None and isinstance(body, dict):
        # A gateway in front of the FHIR server may answer in OAuth's error format.
        description = body.get("error_description") or body.get("error")
        ehr_text = description if isinstance(description, str) else None
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    cls = TemporaryFhirError if response.status_code in TEMPORARY_STATUSES else FatalFhirError
    return cls(
        f"{what} failed with HTTP {response.status_code}.",
        status=response.status_code,
        operation_outcome=outcome if outcome and outcome.get("resourceType") else None,
        retry_after=retry_after,
        ehr_text=ehr_text,
    )


def _entry_status(status: str) -> int:
    try:
        return int(status.split()[0])
    except (ValueError, IndexError):
        return 0


def _objects(container: object, key: str) -> list[dict[str, Any]]:
    """The objects listed under ``key`` of a JSON object: a lone object counts as one,
    anything else (a string, a number, a list item that is not an object) is skipped."""
    value = container.get(key) if isinstance(container, dict) else None
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


class FhirClient:
    def __init__(
        self,
        base: str,
        token: Callable[[], str],
        *,
        session: requests.Session | None = None,
        on_unauthorized: Callable[[], str] | None = None,
        timeout: float = 15.0,
        max_retries_after: int = 0,
    ) -> None:
        self.base = base.rstrip("/")
        self._token = token
        self._own_session = session is None
        self.session = session or requests.Session()
        self.on_unauthorized = on_unauthorized
        self.timeout = timeout
        self.max_retries_after = max_retries_after

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- URLs ---------------------------------------------------------------------------

    def url(self, path_or_url: str) -> str:
        """Absolute URL for a relative path or link; raises UnsafeUrl when off-base."""
        url = urljoin(self.base + "/", path_or_url) if path_or_url else self.base
        if not is_under(url, self.base):
            raise UnsafeUrl(
                "The EHR returned a link outside its FHIR base; it was not followed.",
                status=None,
            )
        return url

    # -- transport ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        what: str | None = None,
    ) -> requests.Response:
        """One FHIR interaction, with one 401 -> refresh -> retry and Retry-After waits.

        The returned response has been read and closed.
        """
        url = self.url(path_or_url)
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        what = what or f"{method} {path_or_url.split('?')[0]}"
        token = self._token() if authenticated else None
        refreshed = False
        retries = 0
        while True:
            response = self._send(method, url, token, json_body, headers, what)
            if response.status_code == 401 and authenticated and not refreshed:
                if self.on_unauthorized is not None:
                    refreshed = True
                    token = self.on_unauthorized()
                    continue
            if response.status_code in (429, 503) and retries < self.max_retries_after:
                delay = parse_retry_after(response.headers.get("Retry-After"))
                if delay is not None and delay <= MAX_RETRY_SLEEP:
                    retries += 1
                    time.sleep(delay)
                    continue
            if response.status_code >= 400:
                raise error_from_response(response, what=what)
            return response

    def _send(
        self,
        method: str,
        url: str,
        token: str | None,
        json_body: Any,
        extra_headers: Mapping[str, str] | None,
        what: str,
    ) -> requests.Response:
        headers = {"Accept": FHIR_JSON}
        if json_body is not None:
            headers["Content-Type"] = FHIR_JSON
        if extra_headers:
            headers.update(extra_headers)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        for _ in range(MAX_REDIRECTS + 1):
            try:
                # Redirects are followed by hand so the token is only ever re-sent to a
                # URL under the base (requests would re-send it within the same host).
                response = self.session.request(
                    method,
                    url,
                    json=json_body,
                    headers=headers,
                    # The token is in ``headers``: no netrc look-up, on any session.
                    auth=OWN_CREDENTIALS,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.Timeout as exc:
                raise FhirUnreachable(f"{what}: the EHR did not answer in time.") from exc
            except requests.ConnectionError as exc:
                raise FhirUnreachable(f"{what}: the EHR could not be reached.") from exc
            except requests.RequestException as exc:
                raise FatalFhirError(f"{what} failed: {type(exc).__name__}.") from exc
            with response:
                _ = response.content
            if response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
                url = self.url(response.headers["Location"])
                if response.status_code == 303:
                    method, json_body = "GET", None
                continue
            return response
        raise FatalFhirError(f"{what}: too many redirects.")

    def _json(self, response: requests.Response, what: str) -> dict[str, Any]:
        body = json_or_none(response)
        if not isinstance(body, dict):
            raise FatalFhirError(f"{what}: the EHR answered with something other than JSON.")
        return body

    # -- interactions -------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        """The CapabilityStatement (``/metadata`` is public: no token is sent)."""
        response = self.request("GET", "metadata", authenticated=False, what="metadata")
        return self._json(response, "metadata")

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        what = f"read {resource_type}"
        return self._json(self.request("GET", f"{resource_type}/{resource_id}", what=what), what)

    def search(
        self, resource_type: str, params: Mapping[str, str] | Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        """One page: the searchset Bundle as returned."""
        what = f"search {resource_type}"
        response = self.request("GET", resource_type, params=params, what=what)
        return self._json(response, what)

    def search_all(
        self,
        resource_type: str,
        params: Mapping[str, str] | Sequence[tuple[str, str]],
        *,
        max_pages: int = 50,
    ) -> Iterator[dict[str, Any]]:
        """Every resource across pages, following ``next`` links (also ``_include``d ones).

        A generator: one page in memory at a time. Stops after ``max_pages`` pages so a
        server that loops its links cannot keep a worker forever.
        """
        for page in self.search_pages(resource_type, params, max_pages=max_pages):
            yield from page

    def search_pages(
        self,
        resource_type: str,
        params: Mapping[str, str] | Sequence[tuple[str, str]],
        *,
        max_pages: int = 50,
    ) -> Iterator[list[dict[str, Any]]]:
        """``search_all`` a page at a time: the resources of each page (matches and
        ``_include``s, in the Bundle's order), the next page asked for when the next one is
        wanted."""
        bundle: object = self.search(resource_type, params)
        pages = 1
        while True:
            # An EHR's Bundle may hold anything where a list of objects belongs: read what
            # has the right shape, skip the rest, never raise on it.
            yield [
                resource
                for entry in _objects(bundle, "entry")
                if isinstance(resource := entry.get("resource"), dict)
            ]
            next_link = next(
                (
                    url
                    for link in _objects(bundle, "link")
                    if link.get("relation") == "next"
                    and isinstance(url := link.get("url"), str)
                    and url
                ),
                None,
            )
            if not next_link or pages >= max_pages:
                if next_link:
                    log.warning("search %s stopped at the %d-page limit", resource_type, pages)
                return
            what = f"search {resource_type} (page {pages + 1})"
            bundle = self._json(self.request("GET", next_link, what=what), what)
            pages += 1

    def batch(self, requests_: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | FhirError]:
        """Send a batch Bundle; one result per request, in order.

        Each item is a Bundle.entry ``request`` (``{"method": "GET", "url": "Patient/1"}``)
        or a whole entry (with ``request`` and maybe ``resource``). A result is the
        entry's resource (for a search, the searchset Bundle), or a FhirError carrying
        that entry's OperationOutcome.
        """
        entries = [dict(r) if "request" in r else {"request": dict(r)} for r in requests_]
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
        response = self.request("POST", "", json_body=bundle, what="batch")
        result = self._json(response, "batch")
        out: list[dict[str, Any] | FhirError] = []
        answers = result.get("entry") or []
        for index, sent in enumerate(entries):
            what = f"batch entry {index} ({sent['request'].get('method')})"
            answer = answers[index] if index < len(answers) else None
            if not isinstance(answer, dict):
                out.append(FatalFhirError(f"{what}: the EHR returned no answer."))
                continue
            status = _entry_status(str((answer.get("response") or {}).get("status", "")))
            if 200 <= status < 300:
                out.append(answer.get("resource") or {})
                continue
            outcome = (answer.get("response") or {}).get("outcome") or answer.get("resource")
            outcome = outcome if isinstance(outcome, dict) else None
            cls = TemporaryFhirError if status in TEMPORARY_STATUSES else FatalFhirError
            out.append(
                cls(
                    f"{what} failed with HTTP {status}.",
                    status=status,
                    operation_outcome=outcome,
                    ehr_text=outcome_text(outcome),
                )
            )
        return out

    def create(
        self, resource: Mapping[str, Any], *, if_none_exist: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST a resource. With ``if_none_exist`` (a search query such as
        ``identifier=urn:x|123``) a server that supports conditional create returns 200
        and the existing resource instead of making a duplicate.

        Returns (status, resource). An empty body (``Prefer`` ignored) yields
        ``{"location": <Location header>}`` when the server sent one.
        """
        resource_type = str(resource.get("resourceType") or "")
        if not resource_type:
            raise ValueError("resource has no resourceType")
        headers = {"Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        what = f"create {resource_type}"
        response = self.request(
            "POST", resource_type, json_body=dict(resource), headers=headers, what=what
        )
        body = json_or_none(response)
        if isinstance(body, dict):
            return response.status_code, body
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        return response.status_code, ({"location": location} if location else {})


def parallel(calls: Sequence[Callable[[], T]], *, max_workers: int = 4) -> list[T | Exception]:
    """Run ``calls`` concurrently; results (or the exception each raised) in order."""
    if not calls:
        return []

    def run(call: Callable[[], T]) -> T | Exception:
        try:
            return call()
        except Exception as exc:  # handed back to the caller in order, not swallowed
            return exc

    with ThreadPoolExecutor(max_workers=min(max_workers, len(calls))) as pool:
        return list(pool.map(run, calls))


def read_ahead(items: Iterator[T], pool: Executor) -> Iterator[T]:
    """``items`` read in ``pool`` and handed over in order, the next one read while the
    caller works on this one: the next page of a search is asked for as soon as this
    page has arrived, by the thread that read it (it holds the GIL then, it does not wait
    for the caller's mapping to let go of it).

    At most two items are read ahead of the one the caller has. An exception raised by
    ``items`` comes out here, where that item would have. When the caller stops early, no
    further item is asked for (one in flight is let finish).
    """
    handoff: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
    room = threading.Semaphore(2)
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                room.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(items)
                except StopIteration:
                    handoff.put((False, None))
                    return
                handoff.put((True, item))
        except BaseException as exc:  # handed to the caller's thread, raised there
            handoff.put((False, exc))

    pool.submit(produce)
    try:
        while True:
            more, value = handoff.get()
            if not more:
                if value is not None:
                    raise value
                return
            room.release()
            yield value
    finally:
        stop.set()
        room.release()  # a reader waiting for room wakes up and sees the stop


def find_canonical(
    client: FhirClient, resource_type: str, url: str, version: str | None = None
) -> dict[str, Any] | None:
    """The ``resource_type`` resource (Questionnaire, ValueSet...) with canonical ``url``
    and ``version`` on the server, or ``None``.

    Searches ``url=X&version=V``, not the canonical form ``url=X|V``: a real server
    took ``X|V`` as a whole URL and found nothing, so every publish created another
    copy. Results are filtered by ``.url`` and ``.version`` (a server may ignore a search
    parameter it does not support and return every version); when that finds nothing,
    ``url=X`` alone is searched and filtered, for servers that refuse or mishandle
    ``version``. Errors other than a refused ``version`` parameter are raised.
    """

    def matching(params: Sequence[tuple[str, str]]) -> dict[str, Any] | None:
        for resource in client.search_all(resource_type, params, max_pages=5):
            if resource.get("resourceType") != resource_type or resource.get("url") != url:
                continue
            if version is None or resource.get("version") == version:
                return resource
        return None

    if version is None:
        return matching([("url", url)])
    try:
        found = matching([("url", url), ("version", version)])
    except FatalFhirError as exc:
        if exc.status != 400:
            raise
        found = None
    return found if found is not None else matching([("url", url)])
