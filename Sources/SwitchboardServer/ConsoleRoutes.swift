import Hummingbird
import NIOCore
import SwitchboardConsole

/// Serves the web console's files under `path` (e.g. `/console`, `/console/stomp.js`).
struct ConsoleRoutes: Sendable {
    let path: String

    func register(on router: Router<BasicRequestContext>) {
        let base = path.hasSuffix("/") ? String(path.dropLast()) : path
        router.get(RouterPath(base)) { _, _ in
            // Relative asset URLs resolve against the page's directory.
            Response(status: .found, headers: [.location: base + "/index.html"])
        }
        router.get(RouterPath(base + "/**")) { request, _ in
            let rest = String(request.uri.path.dropFirst(base.count + 1))
            return Self.serve(rest)
        }
    }

    static func serve(_ name: String) -> Response {
        guard let asset = ConsoleAssets.asset(name) else {
            return PublishAPI.json(["error": "no console file '\(name)'", "field": "path"], status: .notFound)
        }
        return Response(status: .ok, headers: [.contentType: asset.contentType, .cacheControl: "no-cache"],
                        body: .init(byteBuffer: asset.body))
    }
}
