"""Book machinery: papermill execution (:mod:`.build`), generated pages (:mod:`.pages`), the headless-Chromium
reader check (:mod:`.bookcheck`) and the vendored JavaScript (:mod:`.book_assets`). Infrastructure: nothing in the
study or below imports it.
"""
