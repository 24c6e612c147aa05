/* Decode words with a seq2edge bundle from C: cc embed.c -Ihosts/c/build -Lhosts/c/build -lseq2edge */
#include <stdio.h>
#include "seq2edge.h"

int main(int argc, char **argv) {
    if (argc < 3) return fprintf(stderr, "usage: %s BUNDLE WORD...\n", argv[0]), 2;
    s2e_model *model = NULL;
    s2e_results *results = NULL;
    char *error = NULL;
    if (s2e_model_load(argv[1], NULL, &model, &error) != S2E_OK) return fprintf(stderr, "%s\n", error), s2e_string_free(error), 2;
    if (s2e_decode(model, (const char *const *)argv + 2, (size_t)argc - 2, NULL, NULL, &results, &error) != S2E_OK)
        return fprintf(stderr, "%s\n", error), s2e_string_free(error), s2e_model_free(model), 2;
    for (size_t i = 0; i < s2e_results_count(results); ++i) {
        const char *problem = s2e_result_error(results, i);
        if (problem) printf("%s -> (error: %s)\n", argv[i + 2], problem);
        else printf("%s -> %s\n", argv[i + 2], s2e_result_text(results, i, 0));
    }
    s2e_results_free(results);
    s2e_model_free(model);
    return 0;
}
