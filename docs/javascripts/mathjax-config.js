// MathJax 3 settings, read by assets/mathjax/tex-mml-chtml.js (a copy of MathJax that the
// build ships with the site: nothing is fetched from elsewhere when a page is viewed).
// pymdownx.arithmatex (generic mode) wraps each formula in an element of class "arithmatex",
// as \(...\) inline or \[...\] displayed; MathJax typesets those elements and nothing else.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    // An unknown command is an error that shows (data-mjx-error), not quiet red text:
    // docs_build/screenshots.py looks for such errors in every page.
    packages: { "[-]": ["noundefined"] },
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
