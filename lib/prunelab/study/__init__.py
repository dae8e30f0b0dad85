"""The study: image sets (:mod:`.data`, :mod:`.photos`), the run loops (:mod:`.runner`, :mod:`.generation`) and
their caches (:mod:`.tablecache`, :mod:`.cache`), statistics (:mod:`.analysis`, :mod:`.paired`), verdicts, plots,
widgets, the notebook parameters (:mod:`.params`) and one helper module per finding (:mod:`.shortfall`,
:mod:`.hallucination`, :mod:`.complexity`, :mod:`.adaptive_study`).

The top of the library: it may import every layer below it, and nothing below imports it.
"""
