/* Cortex-M harness: runs the model on an embedded test input; the top class is left in es_result. */
#include <string.h>
#include "model.h"

extern const int8_t es_test_input[MODEL_INPUT_BYTES];
volatile int32_t es_result = -1;

int main(void) {
    memcpy(model_input(), es_test_input, MODEL_INPUT_BYTES);
    model_invoke();
    const int8_t *y = model_output();
    int32_t best = 0;
    for (int32_t i = 1; i < MODEL_OUTPUT_BYTES; i++) if (y[i] > y[best]) best = i;
    es_result = best;
    for (;;) { }
}
