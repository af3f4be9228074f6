"""The document layer: texts, HTML, Markdown and SubRip become sentences to translate, and come back whole.

Each format module turns a document into a ``Plan``: the sentences to translate (each one its own work item in
the scheduler, so one page's sentences batch with other requests') and a function that rebuilds the document
from their translations. The gRPC service and the HTTP API both call ``plan_document``.
"""

from nmtserve.server.documents.plan import FORMATS, DocumentError, Plan, plan_document

__all__ = ["FORMATS", "DocumentError", "Plan", "plan_document"]
