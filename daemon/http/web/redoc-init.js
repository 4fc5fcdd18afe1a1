// ReDoc for /openapi.json (a file, not an inline script: the CSP allows none).
window.addEventListener("DOMContentLoaded", () => {
  Redoc.init("/openapi.json", { disableSearch: false }, document.getElementById("redoc"));
});
