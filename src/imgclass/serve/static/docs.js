// The OpenAPI page of imgclass serve: Swagger UI from the files shipped with the server (no CDN).
// The API key the main page keeps for this tab is sent along, so "Try it out" works behind --api-key.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const key = sessionStorage.getItem("imgclass-api-key") || "";
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: (req) => {
      if (key && !req.headers["X-API-Key"] && !req.headers["Authorization"]) req.headers["X-API-Key"] = key;
      return req;
    },
  });
});
