"""The payload formats of device profiles: iotp, SenML, mapped JSON and plain values.

Every format yields what ``ingest.payloads`` yields (a ParsedMessage of readings and
rejections with reason codes) after the same checks, so that the pipeline, the store and
the dead-letter stream need not know which format a device speaks.
"""

from ingest.formats.availability import Availability, parse_availability
from ingest.formats.dispatch import PARSERS, parse_payload

__all__ = ["PARSERS", "Availability", "parse_availability", "parse_payload"]
