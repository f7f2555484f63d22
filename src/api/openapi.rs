//! The OpenAPI 3 document of every route, built from [`super::ROUTES`] so it cannot drift from
//! the router (a test checks both against each other).

use super::ROUTES;
use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let public = *path == "/healthz" || *path == "/" || path.starts_with("/assets/");
        let mut op = json!({
            "summary": summary,
            "responses": {
                "200": {"description": "success", "content": {"application/json": {}}},
                "400": error_response("invalid input: malformed JSON, wrong types, unknown fields or an invalid name"),
                "404": error_response("no such backup"),
                "409": error_response("the name exists, or another operation holds the repository"),
                "413": error_response("request body over 64 KiB"),
                "415": error_response("the body is not application/json"),
                "422": error_response("verification found the backup damaged"),
                "429": error_response("rate limited; see the Retry-After header"),
                "500": error_response("the operation failed; the cause is in the server log"),
                "503": error_response("the backup directory is not writable or full (healthz: unhealthy)"),
            }
        });
        if public {
            op["security"] = json!([]);
            op["responses"]["401"] = Value::Null;
        } else {
            op["responses"]["401"] = error_response("missing or invalid bearer token");
        }
        if let Some(obj) = op["responses"].as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        let mut params = Vec::new();
        if path.contains("{name}") {
            params.push(json!({
                "name": "name", "in": "path", "required": true,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
            }));
        }
        // Every route on one database takes ?database=NAME (default: the unnamed one).
        if path.starts_with("/api/backup/")
            || path.starts_with("/api/operations")
            || *path == "/healthz"
        {
            params.push(json!({
                "name": "database", "in": "query", "required": false,
                "description": "a configured database ([databases.NAME]); default: the unnamed one (DATABASE_URL)",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}
            }));
        }
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if *path == "/api/backup/create" {
            op["requestBody"] = json!({
                "required": false,
                "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": false,
                    "properties": {
                        "backup_name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
                        "compress": {"type": "boolean"}
                    }
                }}}
            });
        }
        if *path == "/api/backup/verify/{name}"
            && let Some(params) = op["parameters"].as_array_mut()
        {
            params.push(json!({
                "name": "restore", "in": "query", "required": false,
                "schema": {"type": "boolean"}
            }));
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "dbkeep",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Database backups: create, list, restore, delete, verify, download. Every /api route needs Authorization: Bearer <token>."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["success", "error", "timestamp"],
                "properties": {
                    "success": {"type": "boolean", "enum": [false]},
                    "error": {"type": "string"},
                    "backup_name": {"type": "string", "nullable": true},
                    "timestamp": {"type": "string", "format": "date-time"}
                }
            }}
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}
