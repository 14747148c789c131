"""The live view: helixd's state as one document, streamed to a web page and ``helixctl top``.

:mod:`~helixd.ui.document` builds the document (pure, from views the daemon hands it),
:mod:`~helixd.ui.feed` streams it to followers as things change, :mod:`~helixd.ui.guard`
decides which browser requests the page may answer, and :mod:`~helixd.ui.routes` serves
the page, its event stream, log follows and actions on the endpoint's port.
"""
