import NIOHTTP1
import SwitchboardAPIModel

extension HTTPPublishHandler {
    /// The JSON error for bytes the parser refused, naming the part at fault where it can.
    static func errorBody(for error: HTTPParserError) -> APIErrorBody {
        let field: String?
        switch error {
        case .invalidContentLength, .unexpectedContentLength: field = "Content-Length"
        case .invalidChunkSize: field = "Transfer-Encoding"
        case .headerOverflow, .invalidHeaderToken, .invalidConstant, .lfExpected: field = "headers"
        case .invalidMethod: field = "method"
        case .invalidURL, .invalidPath, .invalidQueryString, .invalidFragment, .invalidHost, .invalidPort: field = "path"
        case .invalidVersion: field = "version"
        default: field = nil
        }
        return APIErrorBody(error: "malformed HTTP request: \(error)", field: field)
    }
}
