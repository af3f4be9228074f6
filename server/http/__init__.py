"""HTTP beside gRPC: LibreTranslate-compatible routes, the native /v1 JSON API with SSE streaming, OpenAPI, a page."""
