// Swagger UI for /openapi.json (a file, not an inline script: the CSP allows none).
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
