import https from "node:https";
import { rootCertificates } from "node:tls";
import type { INetworkModule, NetworkRequestOptions, NetworkResponse } from "@azure/msal-node";

export interface HttpsNetworkClientOptions {
  /** Extra trusted CA certificates (PEM), added to the system's. Default: the system's only. */
  ca?: string;
  /** Give up on a request after this long (ms): the token endpoint is then treated as down. */
  timeoutMs: number;
}

/**
 * msal's network module on node:https, so the token endpoint may be trusted through an extra CA (a private
 * PKI, a TLS-inspecting proxy, the tests' CA) and a slow endpoint fails after `timeoutMs` instead of hanging.
 * Keeps connections alive between token requests; close() ends them.
 */
export class HttpsNetworkClient implements INetworkModule {
  private readonly agent: https.Agent;
  /** Why the last request failed: msal replaces it with a bare "network_error", this keeps the cause. */
  lastError: Error | undefined;

  constructor(private readonly options: HttpsNetworkClientOptions) {
    this.agent = new https.Agent({
      keepAlive: true,
      minVersion: "TLSv1.2",
      ...(options.ca ? { ca: [...rootCertificates, options.ca] } : {}),
    });
  }

  sendGetRequestAsync<T>(
    url: string,
    options?: NetworkRequestOptions,
    timeout?: number,
  ): Promise<NetworkResponse<T>> {
    return this.request<T>("GET", url, options, timeout);
  }

  sendPostRequestAsync<T>(url: string, options?: NetworkRequestOptions): Promise<NetworkResponse<T>> {
    return this.request<T>("POST", url, options);
  }

  private request<T>(
    method: "GET" | "POST",
    url: string,
    options: NetworkRequestOptions | undefined,
    timeout?: number,
  ): Promise<NetworkResponse<T>> {
    const timeoutMs = Math.min(timeout ?? this.options.timeoutMs, this.options.timeoutMs);
    const body = options?.body;
    this.lastError = undefined;
    return new Promise<NetworkResponse<T>>((resolve, reject) => {
      const request = https.request(
        url,
        {
          method,
          agent: this.agent,
          headers: {
            ...options?.headers,
            ...(body !== undefined ? { "content-length": String(Buffer.byteLength(body)) } : {}),
          },
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on("data", (chunk: Buffer) => chunks.push(chunk));
          response.on("error", reject);
          response.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let parsed: unknown;
            try {
              parsed = text ? JSON.parse(text) : {};
            } catch {
              reject(
                new Error(
                  `the token endpoint answered HTTP ${response.statusCode} with a body that is not JSON`,
                ),
              );
              return;
            }
            const headers: Record<string, string> = {};
            for (const [name, value] of Object.entries(response.headers)) {
              if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(", ") : value;
            }
            resolve({ status: response.statusCode ?? 0, headers, body: parsed as T });
          });
        },
      );
      request.setTimeout(timeoutMs, () => {
        request.destroy(new Error(`the token endpoint did not answer within ${timeoutMs} ms`));
      });
      request.on("error", reject);
      request.end(body);
    }).catch((err: Error) => {
      this.lastError = err;
      throw err;
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
