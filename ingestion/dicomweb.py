"""DICOMweb source: list a PACS's instances with QIDO-RS (paged) and fetch each one with WADO-RS."""

from __future__ import annotations

import datetime
import functools
import io
import itertools
import logging
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.sources import SourceError, SourceItem, SourceScan

log = logging.getLogger(__name__)

SCHEME_PREFIX = "dicomweb+"
# Results asked per QIDO-RS request. Pages continue until one comes back empty, so a PACS that caps a page
# lower than this (Orthanc: LimitFindResults) still lists everything.
QIDO_PAGE = 1000
HTTP_TIMEOUT_SECONDS = 30
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
SOP_INSTANCE_UID = "00080018"
MODALITY = "00080060"
# Any transfer syntax the PACS holds, as stored: no transcoding on the PACS; pylibjpeg/gdcm decode here.
AS_STORED = (("application/dicom", "*"),)

T = TypeVar("T")


@dataclass(frozen=True)
class DicomwebQuery:
    """Which instances of the PACS to pull: all, or those of one study, since a study date, of one modality."""

    study: str | None = None
    since: str | None = None  # YYYYMMDD
    modality: str | None = None

    def series_filters(self) -> dict[str, str]:
        filters = {}
        if self.since:
            filters["StudyDate"] = f"{self.since}-"  # a DICOM date range open at the end
        if self.modality:
            filters["Modality"] = self.modality
        return filters


def is_dicomweb_source(source: str) -> bool:
    return source.startswith((SCHEME_PREFIX + "http://", SCHEME_PREFIX + "https://"))


def service_url(source: str) -> str:
    """`dicomweb+http://host:8042/dicom-web/` → `http://host:8042/dicom-web` (the DICOMweb root)."""
    return source[len(SCHEME_PREFIX):].rstrip("/")


def parse_since(value: str) -> str:
    """A study date given as YYYY-MM-DD or YYYYMMDD → YYYYMMDD (DICOM DA)."""
    for pattern in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(value, pattern).strftime("%Y%m%d")
        except ValueError:
            continue
    raise ValueError(f"--since {value!r} is not a date: use YYYY-MM-DD (e.g. 2024-01-31)")


@functools.lru_cache(maxsize=4)
def connect(url: str, credentials: str = "") -> Any:
    """A DICOMwebClient for `url` (one per process and URL); credentials "user:password" → HTTP Basic, any other
    non-empty value → a Bearer token."""
    import requests
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    if credentials:
        user, sep, password = credentials.partition(":")
        if sep:
            session.auth = (user, password)
        else:
            session.headers["Authorization"] = f"Bearer {credentials}"
    # Archives hold UIDs that break the DICOM UID grammar (hex digests, leading zeros): list and fetch them as is.
    client = DICOMwebClient(url, session=session, timeout=HTTP_TIMEOUT_SECONDS, permissive_uid=True)
    # It logs every request at INFO: a line per series and instance would bury the run's own log.
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    # dicomweb-client retries 5xx/429 for minutes by default; one attempt with a short wait says "down" in
    # seconds, and the read task's own retries cover a transient failure.
    client.set_http_retry_params(retry=False)
    return client


def pacs_error(error: Exception, url: str, instance: str = "") -> str:
    """One line saying what went wrong talking to the PACS at `url` (fetching `instance`), and what to do."""
    import requests

    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return (f"the PACS at {url} refused the credentials (HTTP {status}): pass --pacs-credentials-file PATH "
                    f"or env CBMIR_PACS_CREDENTIALS ('user:password', or a bearer token)")
        if status == 404 and instance:
            return (f"the PACS at {url} has no instance {instance} (HTTP 404): deleted since it was listed, or its "
                    f"UIDs are ambiguous on the PACS")
        if status == 404:
            return (f"no DICOMweb service at {url} (HTTP 404): the URL must be the DICOMweb root, e.g. "
                    f"dicomweb+http://host:8042/dicom-web (Orthanc's DICOMweb plugin: check it is loaded)")
        return f"the PACS at {url} answered HTTP {status} {error.response.reason}"
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return (f"the PACS at {url} is not reachable ({type(error).__name__}): is it running, and are host and "
                f"port right?")
    return f"the PACS at {url} failed: {type(error).__name__}: {error}"


def _call(url: str, request: Callable[[], T], instance: str = "") -> T:
    import requests

    try:
        return request()
    except (requests.RequestException, OSError) as error:
        raise SourceError(pacs_error(error, url, instance)) from None


def _paged(url: str, search: Callable[..., list[dict[str, Any]]], **kwargs: Any) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        page = _call(url, functools.partial(search, limit=QIDO_PAGE, offset=offset, **kwargs))
        if not page:
            return
        yield from page
        offset += len(page)


def _value(result: dict[str, Any], tag: str) -> str:
    values = (result.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def iter_dicomweb(url: str, credentials: str, query: DicomwebQuery) -> Iterator[SourceItem]:
    """Every instance matching `query`, series by series in the PACS's order; no pixels are fetched.

    Series first (Modality and StudyDate are series/study attributes every QIDO-RS server matches there), then
    the instances of each. An item's name is study/series/sop.dcm below the DICOMweb root: DICOM, so the store
    keeps only its keyed hash by default (UIDs link to patients inside the hospital).
    """
    client = connect(url, credentials)
    for series in _paged(url, client.search_for_series, study_instance_uid=query.study,
                         search_filters=query.series_filters()):
        study_uid, series_uid = _value(series, STUDY_INSTANCE_UID), _value(series, SERIES_INSTANCE_UID)
        if not study_uid or not series_uid:
            log.warning("QIDO-RS series result without Study/Series Instance UID skipped: %s", url)
            continue
        for instance in _paged(url, client.search_for_instances, study_instance_uid=study_uid,
                               series_instance_uid=series_uid):
            sop_uid = _value(instance, SOP_INSTANCE_UID)
            if not sop_uid:
                continue
            path = f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
            yield SourceItem(uri=f"{SCHEME_PREFIX}{url}/{path}", name=f"{study_uid}/{series_uid}/{sop_uid}.dcm")


def split_instance_uri(uri: str) -> tuple[str, str, str, str]:
    """An item's uri → (DICOMweb root, study, series, SOP instance UID)."""
    root, _, path = service_url(uri).rpartition("/studies/")
    parts = path.split("/")
    if len(parts) != 5 or parts[1] != "series" or parts[3] != "instances":
        raise ValueError(f"not a DICOMweb instance URI: {uri}")
    return root, parts[0], parts[2], parts[4]


def fetch_instance(uri: str, credentials: str = "") -> bytes:
    """The instance's DICOM file bytes over WADO-RS, in its stored transfer syntax."""
    import pydicom

    root, study, series, sop = split_instance_uri(uri)
    try:
        dataset = _call(root, lambda: connect(root, credentials).retrieve_instance(study, series, sop,
                                                                                     media_types=AS_STORED), sop)
        buffer = io.BytesIO()
        # WADO-RS parts are DICOM files (Part 10); written back as read, so the decoder sees what the PACS holds.
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    except SourceError:
        raise
    except Exception as error:  # a part pydicom cannot parse or write: this instance's reason, not a traceback
        raise SourceError(f"the PACS at {root} sent instance {sop} in a form pydicom cannot read: "
                          f"{type(error).__name__}: {error}") from None
    return buffer.getvalue()


def scan_dicomweb(config: IngestConfig) -> SourceScan:
    """Check the PACS answers and count the instances `config` selects (a first QIDO-RS pass, no pixels)."""
    url = service_url(config.source)
    query = DicomwebQuery(study=config.study, since=parse_since(config.since) if config.since else None,
                          modality=config.modality)
    items = functools.partial(iter_dicomweb, url, config.pacs_credentials, query)
    stop = None if config.limit is None else max(config.limit, 1)
    count = sum(1 for _ in itertools.islice(items(), stop))
    if not count:
        wanted = ", ".join(f"{k}={v}" for k, v in vars(query).items() if v) or "any"
        raise SourceError(f"no instances on the PACS at {url} match ({wanted})")
    if config.limit is not None:
        count = min(count, config.limit)
    log.info("counted %d instances on the PACS at %s", count, url)
    return SourceScan(root=url, kind="dicomweb", dataset=config.dataset or urllib.parse.urlsplit(url).netloc,
                      count=count, items=items)
