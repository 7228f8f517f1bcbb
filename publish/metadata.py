"""release.yaml -> Zenodo deposition metadata, checked locally before anything is sent.

release.yaml holds the legacy deposit metadata keys (title, creators, description, license,
keywords, …) plus ``paper_doi``, the DOI of the paper that documents the dataset. The
publisher adds what it knows: ``upload_type: dataset``, ``version``, ``publication_date``
(today unless given), ``isDocumentedBy`` the paper and ``isNewVersionOf`` the previous version.

The local check catches what Zenodo would refuse or silently accept wrongly: creators that are
not "Family, Given", ORCIDs whose ISO 7064 mod 11-2 check character is wrong, a version string
already used by a published version, a missing link to the paper or to the previous version.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import yaml

UPLOAD_TYPE = "dataset"
ACCESS_RIGHTS = ("open", "embargoed", "restricted", "closed")
#: Keys the legacy deposit API accepts in ``metadata`` (anything else is refused with a 400).
DEPOSIT_KEYS = frozenset({
    "upload_type", "publication_type", "image_type", "publication_date", "title", "creators",
    "description", "access_right", "license", "embargo_date", "access_conditions", "doi",
    "keywords", "notes", "related_identifiers", "contributors", "references", "communities",
    "grants", "subjects", "version", "language", "locations", "dates", "method",
})
#: Keys release.yaml may hold beyond the deposit keys.
EXTRA_KEYS = frozenset({"paper_doi"})
REQUIRED = ("upload_type", "title", "creators", "description", "access_right", "license",
            "version", "publication_date", "keywords", "related_identifiers")
_DOI = re.compile(r"^10\.\d{4,9}/\S+$")
_ORCID = re.compile(r"^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$")
_CREATOR = re.compile(r"^[^,]+, [^,]+$")


class MetadataError(ValueError):
    """release.yaml or the metadata built from it breaks a rule (all problems listed)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def orcid_check_char(base_digits: str) -> str:
    """ISO 7064 mod 11-2 check character of the first 15 ORCID digits."""
    total = 0
    for digit in base_digits:
        total = (total + int(digit)) * 2
    result = (12 - total % 11) % 11
    return "X" if result == 10 else str(result)


def orcid_valid(orcid: str) -> bool:
    """Whether an ORCID iD (0000-0002-1825-0097 form) is well formed with a valid check char."""
    if not _ORCID.fullmatch(orcid):
        return False
    digits = orcid.replace("-", "")
    return orcid_check_char(digits[:15]) == digits[15]


def doi_valid(doi: str) -> bool:
    """Whether a string is a bare DOI (10.xxxx/…), not a URL."""
    return isinstance(doi, str) and bool(_DOI.fullmatch(doi))


def load_release_yaml(path: Path) -> dict[str, Any]:
    """The mapping in release.yaml; MetadataError when it is missing, unreadable (not UTF-8
    text, not YAML) or not a mapping, so the publisher reports it as one line naming the file
    rather than a UnicodeDecodeError traceback."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(str(path), ["file not found: write the deposition metadata "
                                        "(title, creators, description, license, keywords, "
                                        "paper_doi) there or pass --metadata"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise MetadataError(str(path), [
            f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save "
            "it as UTF-8 YAML"]) from None
    except OSError as exc:
        raise MetadataError(str(path), [f"cannot be read ({exc.strerror or exc})"]) from None
    except yaml.YAMLError as exc:
        raise MetadataError(str(path), [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise MetadataError(str(path), ["must hold a mapping of metadata keys"])
    return data


def build_metadata(raw: dict[str, Any], version: str, previous_doi: str | None,
                   today: dt.date) -> dict[str, Any]:
    """The complete deposition metadata for one version (not yet validated)."""
    metadata = {k: v for k, v in raw.items() if k not in EXTRA_KEYS}
    metadata.setdefault("upload_type", UPLOAD_TYPE)
    metadata.setdefault("access_right", "open")
    metadata["version"] = version
    date = metadata.get("publication_date", today)
    metadata["publication_date"] = date.isoformat() if isinstance(date, dt.date) else str(date)
    related = [dict(r) for r in metadata.get("related_identifiers") or []
               if isinstance(r, dict) and r.get("relation") != "isNewVersionOf"]
    paper = raw.get("paper_doi")
    if paper and not any(r.get("relation") == "isDocumentedBy" and r.get("identifier") == paper
                         for r in related):
        related.append({"identifier": paper, "relation": "isDocumentedBy",
                        "resource_type": "publication-article", "scheme": "doi"})
    if previous_doi:
        related.append({"identifier": previous_doi, "relation": "isNewVersionOf",
                        "resource_type": "dataset", "scheme": "doi"})
    metadata["related_identifiers"] = related
    return metadata


def metadata_problems(metadata: dict[str, Any], used_versions: set[str],
                      previous_doi: str | None) -> list[str]:
    """Every rule the deposition metadata breaks, as "field: rule" messages."""
    problems = [f"{key}: unknown key (Zenodo refuses it)" for key in sorted(metadata)
                if key not in DEPOSIT_KEYS]
    problems += [f"{key}: required" for key in REQUIRED if not metadata.get(key)]
    if metadata.get("upload_type") not in (None, UPLOAD_TYPE):
        problems.append(f"upload_type: must be {UPLOAD_TYPE!r}, not "
                        f"{metadata['upload_type']!r}")
    problems += _creator_problems(metadata.get("creators"))
    if metadata.get("access_right") and metadata["access_right"] not in ACCESS_RIGHTS:
        problems.append(f"access_right: {metadata['access_right']!r} is not one of "
                        f"{list(ACCESS_RIGHTS)}")
    for key in ("title", "description", "license"):
        if key in metadata and not isinstance(metadata[key], str):
            problems.append(f"{key}: must be text")
    version = str(metadata.get("version", ""))
    if version and version in used_versions:
        problems.append(f"version: {version!r} is already used by a published version "
                        f"(used: {sorted(used_versions)})")
    try:
        dt.date.fromisoformat(str(metadata.get("publication_date", "")))
    except ValueError:
        problems.append(f"publication_date: {metadata.get('publication_date')!r} is not "
                        "YYYY-MM-DD")
    keywords = metadata.get("keywords")
    if keywords is not None and (not isinstance(keywords, list)
                                 or not all(isinstance(k, str) and k for k in keywords)):
        problems.append("keywords: must be a list of non-empty strings")
    problems += _related_problems(metadata.get("related_identifiers") or [], previous_doi)
    return problems


def _creator_problems(creators: Any) -> list[str]:
    if creators is None:
        return []
    if not isinstance(creators, list):
        return ["creators: must be a list"]
    problems = []
    for i, creator in enumerate(creators):
        if not isinstance(creator, dict):
            problems.append(f"creators[{i}]: must be a mapping with name (and affiliation, "
                            "orcid)")
            continue
        name = creator.get("name", "")
        if not isinstance(name, str) or not _CREATOR.fullmatch(name.strip()):
            problems.append(f"creators[{i}].name: {name!r} is not 'Family, Given'")
        orcid = creator.get("orcid")
        if orcid is not None and not orcid_valid(str(orcid)):
            problems.append(f"creators[{i}].orcid: {orcid!r} is not a valid ORCID iD "
                            "(0000-0000-0000-000X form, ISO 7064 mod 11-2 check character)")
    return problems


def _related_problems(related: list[Any], previous_doi: str | None) -> list[str]:
    problems = []
    for i, rel in enumerate(related):
        if not isinstance(rel, dict) or not rel.get("identifier") or not rel.get("relation"):
            problems.append(f"related_identifiers[{i}]: needs identifier and relation")
        elif rel.get("scheme", "doi") == "doi" and not doi_valid(str(rel["identifier"])):
            problems.append(f"related_identifiers[{i}].identifier: {rel['identifier']!r} is "
                            "not a bare DOI (10.xxxx/…)")
    relations = {(r.get("relation"), r.get("identifier")) for r in related if isinstance(r, dict)}
    if not any(rel == "isDocumentedBy" for rel, _ in relations):
        problems.append("related_identifiers: no isDocumentedBy link to the paper "
                        "(set paper_doi in release.yaml)")
    if previous_doi and ("isNewVersionOf", previous_doi) not in relations:
        problems.append(f"related_identifiers: no isNewVersionOf link to the previous version "
                        f"{previous_doi}")
    return problems


#: Keys holding people (creators, contributors): mappings whose empty fields Zenodo drops or
#: returns as null.
PERSON_KEYS = frozenset({"creators", "contributors"})


def identifier_scheme(identifier: str) -> str | None:
    """The scheme Zenodo detects for a related identifier sent without one (it stores and
    returns it): ``doi`` for a bare DOI, ``url`` for an http(s) URL; None when unsure."""
    text = str(identifier).strip()
    if doi_valid(text):
        return "doi"
    if re.match(r"https?://", text, re.IGNORECASE):
        return "url"
    return None


def _without_empty(value: Any) -> Any:
    """A mapping without its null or empty fields (anything else as it is)."""
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if v not in (None, "", [], {})}


def _related(value: Any) -> Any:
    """A related identifier as Zenodo returns it: empty fields dropped, the scheme detected
    when none was sent, scheme names compared case-insensitively."""
    if not isinstance(value, dict):
        return value
    rel = _without_empty(value)
    scheme = rel.get("scheme") or identifier_scheme(str(rel.get("identifier", "")))
    if scheme:
        rel["scheme"] = str(scheme).casefold()
    return rel


def _license_id(value: Any) -> Any:
    """A licence id, spelled either way (``cc-by-4.0``, ``CC-BY-4.0``, ``{"id": …}``)."""
    if isinstance(value, dict):
        value = value.get("id")
    return value.strip().casefold() if isinstance(value, str) else value


def comparable(key: str, value: Any) -> Any:
    """A metadata value normalised for the read-back check, so that what Zenodo's legacy
    serializer returns for a value stored as sent compares equal: people without
    ``affiliation``/``orcid``/``gnd`` get ``"affiliation": null`` (dropped here), related
    identifiers sent without a scheme come back with the detected one, licence ids may be
    respelled."""
    if key in PERSON_KEYS and isinstance(value, list):
        return [_without_empty(person) for person in value]
    if key == "related_identifiers" and isinstance(value, list):
        return [_related(rel) for rel in value]
    if key == "license":
        return _license_id(value)
    return value


def metadata_differences(sent: dict[str, Any], returned: dict[str, Any]) -> list[str]:
    """Keys whose value Zenodo did not store as sent (read-back check), after ``comparable``
    has normalised both sides."""
    return [key for key in sorted(sent)
            if comparable(key, returned.get(key)) != comparable(key, sent[key])]
