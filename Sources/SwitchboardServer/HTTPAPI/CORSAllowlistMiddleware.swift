import Hummingbird
import SwitchboardAPIModel
import SwitchboardWire

/// CORS for the HTTP API: browsers on an allowed origin may call it (`http.allowed-origins`;
/// empty or `*` allows any origin). Preflight `OPTIONS` requests are answered here. A request
/// whose `Origin` is not allowed is refused (403) rather than carried out without CORS
/// headers, so a cross-site "simple" POST cannot publish either.
struct CORSAllowlistMiddleware<Context: RequestContext>: RouterMiddleware {
    let allowedOrigins: [String]

    func allows(_ origin: String) -> Bool {
        OriginName.isAllowed(origin, by: allowedOrigins)
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let origin = request.headers[.origin] else { return try await next(request, context) }
        guard allows(origin) else {
            return PublishAPI.json(APIErrorBody(error: "origin \(origin) is not allowed", field: "Origin"), status: .forbidden)
        }
        if request.method == .options {
            var response = Response(status: .noContent)
            response.headers[.accessControlAllowOrigin] = origin
            response.headers[.accessControlAllowMethods] = "GET, POST, OPTIONS"
            response.headers[.accessControlAllowHeaders] = request.headers[.accessControlRequestHeaders] ?? "Content-Type, Authorization"
            response.headers[.accessControlMaxAge] = "600"
            response.headers[.vary] = "Origin"
            return response
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            // An error answer (a refused publish) must be readable by the page too.
            throw CORSAnsweredError(error: error, origin: origin)
        }
        response.headers[.accessControlAllowOrigin] = origin
        response.headers[.vary] = "Origin"
        return response
    }
}

/// An error of the routes, answered as it would be plus the CORS headers of an allowed origin.
struct CORSAnsweredError: HTTPResponseError {
    let error: any HTTPResponseError
    let origin: String

    var status: HTTPResponse.Status { error.status }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = try error.response(from: request, context: context)
        response.headers[.accessControlAllowOrigin] = origin
        response.headers[.vary] = "Origin"
        return response
    }
}
