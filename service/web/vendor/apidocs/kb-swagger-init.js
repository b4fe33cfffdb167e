// kb's own (not vendored): starts Swagger UI on the element that names the OpenAPI description's URL, so that the
// page needs no inline script (its Content-Security-Policy allows scripts from kb's own files only).
(() => {
  const element = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: element.dataset.specUrl,
    domNode: element,
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null, // the default would send the description to validator.swagger.io
    presets: [SwaggerUIBundle.presets.apis],
  });
})();
