import Foundation
import NIOCore

/// The web console's static files (HTML, CSS, JavaScript), shipped with the binary as
/// SwiftPM resources and served by the gateway under `console.path`.
package enum ConsoleAssets {
    /// The bytes and content type of the asset at `path` (relative, e.g. `index.html`,
    /// `stomp.js`), or nil if there is none. Paths with `..` are refused.
    package static func asset(_ path: String) -> (body: ByteBuffer, contentType: String)? {
        let name = path.isEmpty ? "index.html" : path
        guard !name.contains(".."), !name.hasPrefix("/"),
            let base = Bundle.module.resourceURL?.appendingPathComponent("Assets")
        else { return nil }
        let url = base.appendingPathComponent(name)
        guard let data = try? Data(contentsOf: url) else { return nil }
        return (ByteBuffer(bytes: data), contentType(for: url.pathExtension))
    }

    static func contentType(for ext: String) -> String {
        switch ext {
        case "html": return "text/html; charset=utf-8"
        case "js", "mjs": return "text/javascript; charset=utf-8"
        case "css": return "text/css; charset=utf-8"
        case "svg": return "image/svg+xml"
        case "png": return "image/png"
        case "json": return "application/json"
        default: return "application/octet-stream"
        }
    }
}
