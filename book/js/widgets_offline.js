/* Offline widget rendering fixes for Jupyter Book 1 pages (loaded between require.js and the widget manager,
 * see nb_ipywidgets_js in _config.yml; checked by `python -m prunelab.book.bookcheck`).
 *
 * 1. The widget manager bundle (@jupyter-widgets/html-manager embed-amd.js) derives the folder of its icon fonts
 *    from its AMD module name, which require.js resolves against the *page's* folder
 *    (book/chapters/@jupyter-widgets/html-manager/dist/...woff2: missing files). Map that module prefix onto the
 *    folder this script and the vendored bundle are served from.
 * 2. The widgets typeset their labels with the MathJax 2 API (MathJax.Hub.Queue); the book loads MathJax 3, so
 *    every labelled widget threw "Cannot read properties of undefined (reading 'Queue')". Provide that one call
 *    on top of MathJax 3's typesetPromise before the widgets render (they render on the load event).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (script && script.src && window.require && window.require.config) {
    var base = script.src.slice(0, script.src.lastIndexOf("/") + 1);
    window.require.config({ paths: { "@jupyter-widgets/html-manager/dist": base + "html-manager" } });
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub || typeof mj.typesetPromise !== "function") return;
    mj.Hub = {
      Queue: function () {
        var elements = [];
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) elements.push(job[2]);
        }
        if (elements.length) {
          mj.startup.promise.then(function () { return mj.typesetPromise(elements); }).catch(function (err) {
            console.warn("MathJax typeset of a widget failed", err);
          });
        }
      }
    };
  });
})();
