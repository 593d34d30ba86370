import HTTPTypes
import Hummingbird
import SwitchboardAPIModel

/// Answers a request no route serves in JSON, like every other error of the API: `405` with
/// `Allow` for a publish route asked with another method, `404` naming the path otherwise.
/// (Hummingbird's own answer to both is an empty `404`.)
struct NoRouteMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound && error.body == nil {
            let path = request.uri.path
            if let allowed = Self.allowedMethods(path: path), !allowed.contains(request.method) {
                let names = allowed.map(\.rawValue).joined(separator: ", ")
                var response = PublishAPI.json(
                    APIErrorBody(error: "method \(request.method.rawValue) is not allowed on \(path); allowed: \(names)", field: "method"),
                    status: .methodNotAllowed)
                response.headers[.allow] = names
                return response
            }
            return PublishAPI.json(APIErrorBody(error: "no route for \(request.method.rawValue) \(path)", field: "path"), status: .notFound)
        }
    }

    /// The methods of the publish routes (`POST` only); nil for any other path.
    static func allowedMethods(path: String) -> [HTTPRequest.Method]? {
        switch path {
        case "/api/notification", "/api/notifications": return [.post]
        default:
            let prefix = "/api/users/", suffix = "/notification"
            guard path.hasPrefix(prefix), path.hasSuffix(suffix), path.count > prefix.count + suffix.count else { return nil }
            return path.dropFirst(prefix.count).dropLast(suffix.count).contains("/") ? nil : [.post]
        }
    }
}
